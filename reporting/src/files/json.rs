//! JSON checked as it streams by, in constant memory, and turned into table rows.
//!
//! An upload routed as JSON ([`super::routing`]) may be gigabytes: it is never parsed into a
//! tree. [`Checker`] is a push parser (a state machine over bytes, its memory the nesting
//! depth) that checks the JSON grammar and UTF-8, knows the line and column of every byte
//! for the error it reports, and copies each row out as one compact line (whitespace
//! outside strings dropped; a JSON string cannot hold a raw line break, so a row is one
//! line): NDJSON that DataFusion reads as a table.
//!
//! What a row is: a document ([`Shape::Document`]) that is an object is one row, an array
//! one row per element (each must be an object); NDJSON ([`Shape::Lines`]) is objects one
//! after another, each a row.

use std::fmt;

/// Deepest nesting accepted (objects and arrays).
pub const MAX_DEPTH: usize = 512;

/// What the upload must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One JSON value: an object, or an array of objects.
    Document,
    /// Objects one after another, one a line (NDJSON, JSON Lines).
    Lines,
}

/// Why an upload is not the JSON it should be, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    /// 1-based line of the offending character (lines end with `\n`).
    pub line: u64,
    /// 1-based column, in characters.
    pub column: u64,
    pub message: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for JsonError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Number {
    Minus,
    Zero,
    Int,
    FracStart,
    Frac,
    ExpStart,
    ExpSign,
    Exp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before the first value (or between values of NDJSON).
    Start,
    /// A value is expected (after `:` or `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,`, a closing bracket, or the end.
    AfterValue,
    /// Inside a string (a key when `key`).
    Str {
        key: bool,
    },
    /// After `\` in a string.
    Escape {
        key: bool,
    },
    /// `\u` and this many hex digits still to come.
    Unicode {
        key: bool,
        left: u8,
    },
    /// A literal (`true`, `false`, `null`): the bytes still expected.
    Literal {
        rest: &'static [u8],
    },
    Number(Number),
    /// The document has ended (only whitespace may follow).
    Done,
}

/// The push parser. Feed it with [`Checker::feed`], end with [`Checker::finish`]; rows
/// come out of [`Checker::take_rows`].
pub struct Checker {
    shape: Shape,
    state: State,
    stack: Vec<Container>,
    line: u64,
    column: u64,
    /// Continuation bytes of a UTF-8 character still to come, and the range of the next.
    utf8_left: u8,
    utf8_next: (u8, u8),
    /// The depth (stack length) at which a row's object opens; 0: not known yet.
    row_depth: usize,
    in_row: bool,
    rows: u64,
    /// Elements seen in the top-level array (for messages).
    elements: u64,
    out: Vec<u8>,
}

impl Checker {
    pub fn new(shape: Shape) -> Checker {
        Checker {
            shape,
            state: State::Start,
            stack: Vec::new(),
            line: 1,
            column: 0,
            utf8_left: 0,
            utf8_next: (0x80, 0xBF),
            row_depth: 0,
            in_row: false,
            rows: 0,
            elements: 0,
            out: Vec::new(),
        }
    }

    /// Rows completed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The NDJSON produced since the last call (whole rows and the start of the current
    /// one; the caller appends them in order).
    pub fn take_rows(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn error(&self, message: impl Into<String>) -> JsonError {
        JsonError {
            line: self.line,
            column: self.column.max(1),
            message: message.into(),
        }
    }

    /// Checks the next bytes of the upload.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), JsonError> {
        for &b in bytes {
            if !(0x80..0xC0).contains(&b) {
                self.column += 1;
            }
            self.byte(b)?;
            if b == b'\n' {
                self.line += 1;
                self.column = 0;
            }
        }
        Ok(())
    }

    /// The end of the upload: the document must be complete.
    pub fn finish(&mut self) -> Result<u64, JsonError> {
        self.column += 1;
        if let State::Number(n) = self.state {
            self.end_number(n)?;
        }
        match self.state {
            State::Done => Ok(self.rows),
            State::Start if self.shape == Shape::Lines => Ok(self.rows),
            State::Start => Err(self.error("empty document: expected a JSON object or array")),
            State::AfterValue if self.stack.is_empty() => Ok(self.rows),
            State::Str { .. } | State::Escape { .. } | State::Unicode { .. } => {
                Err(self.error("unexpected end inside a string"))
            }
            _ => Err(self.error("unexpected end of the document")),
        }
    }

    fn emit(&mut self, b: u8) {
        if self.in_row {
            self.out.push(b);
        }
    }

    fn byte(&mut self, b: u8) -> Result<(), JsonError> {
        match self.state {
            State::Str { key } => return self.string_byte(b, key),
            State::Escape { key } => {
                if !matches!(
                    b,
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u'
                ) {
                    return Err(self.error(format!("invalid escape \\{}", printable(b))));
                }
                self.emit(b);
                self.state = if b == b'u' {
                    State::Unicode { key, left: 4 }
                } else {
                    State::Str { key }
                };
                return Ok(());
            }
            State::Unicode { key, left } => {
                if !b.is_ascii_hexdigit() {
                    return Err(self.error("\\u must be followed by 4 hex digits"));
                }
                self.emit(b);
                self.state = if left == 1 {
                    State::Str { key }
                } else {
                    State::Unicode {
                        key,
                        left: left - 1,
                    }
                };
                return Ok(());
            }
            State::Literal { rest } => {
                let (&first, tail) = rest.split_first().unwrap_or((&0, &[]));
                if b != first {
                    return Err(self.error(format!("unexpected {}", printable(b))));
                }
                self.emit(b);
                self.state = if tail.is_empty() {
                    self.value_ended()
                } else {
                    State::Literal { rest: tail }
                };
                return Ok(());
            }
            State::Number(n) => {
                if let Some(next) = number_step(n, b) {
                    self.emit(b);
                    self.state = State::Number(next);
                    return Ok(());
                }
                self.end_number(n)?;
                // The byte that ended the number is read after it.
            }
            _ => {}
        }
        if matches!(b, b' ' | b'\t' | b'\r' | b'\n') {
            return Ok(());
        }
        match self.state {
            State::Start | State::Value | State::ArrayFirst => {
                if self.state == State::ArrayFirst && b == b']' {
                    return self.close(Container::Array);
                }
                self.value_start(b)
            }
            State::ObjectFirst | State::Key => {
                if self.state == State::ObjectFirst && b == b'}' {
                    return self.close(Container::Object);
                }
                if b != b'"' {
                    return Err(self.error(format!(
                        "expected a key (a string in double quotes), found {}",
                        printable(b)
                    )));
                }
                self.emit(b);
                self.state = State::Str { key: true };
                Ok(())
            }
            State::Colon => {
                if b != b':' {
                    return Err(self.error(format!(
                        "expected ':' after the key, found {}",
                        printable(b)
                    )));
                }
                self.emit(b);
                self.state = State::Value;
                Ok(())
            }
            State::AfterValue => match (b, self.stack.last()) {
                (b',', Some(Container::Object)) => {
                    self.emit(b);
                    self.state = State::Key;
                    Ok(())
                }
                (b',', Some(Container::Array)) => {
                    if self.stack.len() > self.row_depth {
                        self.emit(b);
                    }
                    self.state = State::Value;
                    Ok(())
                }
                (b'}', Some(Container::Object)) => self.close(Container::Object),
                (b']', Some(Container::Array)) => self.close(Container::Array),
                (_, None) => self.value_start(b),
                (_, Some(Container::Object)) => Err(self.error(format!(
                    "expected ',' or '}}' after a value, found {}",
                    printable(b)
                ))),
                (_, Some(Container::Array)) => Err(self.error(format!(
                    "expected ',' or ']' after a value, found {}",
                    printable(b)
                ))),
            },
            State::Done => Err(self.error(format!(
                "unexpected {} after the end of the document",
                printable(b)
            ))),
            State::Str { .. }
            | State::Escape { .. }
            | State::Unicode { .. }
            | State::Literal { .. }
            | State::Number(_) => Ok(()),
        }
    }

    fn string_byte(&mut self, b: u8, key: bool) -> Result<(), JsonError> {
        if self.utf8_left > 0 {
            let (low, high) = self.utf8_next;
            if !(low..=high).contains(&b) {
                return Err(self.error("invalid UTF-8"));
            }
            self.utf8_left -= 1;
            self.utf8_next = (0x80, 0xBF);
            self.emit(b);
            return Ok(());
        }
        match b {
            b'"' => {
                self.emit(b);
                self.state = if key {
                    State::Colon
                } else {
                    self.value_ended()
                };
            }
            b'\\' => {
                self.emit(b);
                self.state = State::Escape { key };
            }
            0x00..=0x1F => {
                return Err(
                    self.error("control character in a string (a line break must be written \\n)")
                )
            }
            0x20..=0x7F => self.emit(b),
            0xC2..=0xDF => self.utf8(b, 1, (0x80, 0xBF)),
            0xE0 => self.utf8(b, 2, (0xA0, 0xBF)),
            0xED => self.utf8(b, 2, (0x80, 0x9F)),
            0xE1..=0xEF => self.utf8(b, 2, (0x80, 0xBF)),
            0xF0 => self.utf8(b, 3, (0x90, 0xBF)),
            0xF1..=0xF3 => self.utf8(b, 3, (0x80, 0xBF)),
            0xF4 => self.utf8(b, 3, (0x80, 0x8F)),
            _ => return Err(self.error("invalid UTF-8")),
        }
        Ok(())
    }

    fn utf8(&mut self, b: u8, left: u8, next: (u8, u8)) {
        self.utf8_left = left;
        self.utf8_next = next;
        self.emit(b);
    }

    /// A value begins with `b` (whitespace already skipped).
    fn value_start(&mut self, b: u8) -> Result<(), JsonError> {
        let depth = self.stack.len();
        if depth == 0 {
            if self.shape == Shape::Document && self.state == State::AfterValue {
                return Err(self.error(format!(
                    "unexpected {} after the end of the document",
                    printable(b)
                )));
            }
            match (self.shape, b) {
                (Shape::Document, b'[') => self.row_depth = 2,
                (_, b'{') => self.row_depth = 1,
                (Shape::Document, _) => {
                    return Err(self.error(
                        "a JSON document must be an object or an array of objects (its rows)",
                    ))
                }
                (Shape::Lines, _) => {
                    return Err(self.error("each line of NDJSON must be a JSON object (a row)"))
                }
            }
        } else if depth + 1 == self.row_depth {
            // An element of the top-level array.
            self.elements += 1;
            if b != b'{' {
                return Err(self.error(format!(
                    "element {} of the array is not an object (each element is a row)",
                    self.elements
                )));
            }
        }
        match b {
            b'{' | b'[' => {
                if depth >= MAX_DEPTH {
                    return Err(self.error(format!("nested deeper than {MAX_DEPTH} levels")));
                }
                let container = if b == b'{' {
                    Container::Object
                } else {
                    Container::Array
                };
                self.stack.push(container);
                if self.stack.len() == self.row_depth {
                    self.in_row = true;
                }
                self.emit(b);
                self.state = if b == b'{' {
                    State::ObjectFirst
                } else {
                    State::ArrayFirst
                };
            }
            b'"' => {
                self.emit(b);
                self.state = State::Str { key: false };
            }
            b't' => self.literal(b, b"rue"),
            b'f' => self.literal(b, b"alse"),
            b'n' => self.literal(b, b"ull"),
            b'-' => {
                self.emit(b);
                self.state = State::Number(Number::Minus);
            }
            b'0' => {
                self.emit(b);
                self.state = State::Number(Number::Zero);
            }
            b'1'..=b'9' => {
                self.emit(b);
                self.state = State::Number(Number::Int);
            }
            _ => return Err(self.error(format!("expected a value, found {}", printable(b)))),
        }
        Ok(())
    }

    fn literal(&mut self, b: u8, rest: &'static [u8]) {
        self.emit(b);
        self.state = State::Literal { rest };
    }

    fn end_number(&mut self, n: Number) -> Result<(), JsonError> {
        match n {
            Number::Zero | Number::Int | Number::Frac | Number::Exp => {
                self.state = self.value_ended();
                Ok(())
            }
            _ => Err(self.error("incomplete number")),
        }
    }

    fn close(&mut self, container: Container) -> Result<(), JsonError> {
        self.emit(if container == Container::Object {
            b'}'
        } else {
            b']'
        });
        if self.stack.len() == self.row_depth && self.in_row {
            self.in_row = false;
            self.rows += 1;
            self.out.push(b'\n');
        }
        self.stack.pop();
        self.state = self.value_ended();
        Ok(())
    }

    /// The state after a complete value at the current depth.
    fn value_ended(&self) -> State {
        if self.stack.is_empty() && self.shape == Shape::Document {
            State::Done
        } else {
            State::AfterValue
        }
    }
}

/// The next state of a number reading `b`, or `None` if `b` ends it.
fn number_step(n: Number, b: u8) -> Option<Number> {
    use Number::*;
    match (n, b) {
        (Minus, b'0') => Some(Zero),
        (Minus, b'1'..=b'9') => Some(Int),
        (Int, b'0'..=b'9') => Some(Int),
        (Zero | Int, b'.') => Some(FracStart),
        (FracStart | Frac, b'0'..=b'9') => Some(Frac),
        (Zero | Int | Frac, b'e' | b'E') => Some(ExpStart),
        (ExpStart, b'+' | b'-') => Some(ExpSign),
        (ExpStart | ExpSign | Exp, b'0'..=b'9') => Some(Exp),
        _ => None,
    }
}

/// A byte as a message shows it.
fn printable(b: u8) -> String {
    if b == b' ' || b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("byte 0x{b:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(shape: Shape, text: &str) -> Result<(u64, String), JsonError> {
        let mut checker = Checker::new(shape);
        let mut out = Vec::new();
        // One byte at a time: every state must survive a chunk boundary.
        for b in text.as_bytes() {
            checker.feed(std::slice::from_ref(b))?;
            out.extend(checker.take_rows());
        }
        let n = checker.finish()?;
        out.extend(checker.take_rows());
        Ok((n, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn an_array_of_objects_becomes_one_compact_line_per_element() {
        let text = "[\n  {\"a\": 1, \"b\": [1, 2.5e3, -0],\n   \"c\": \"x y\\n\\u00e9 ü\"},\n  {\"a\": null, \"d\": {\"e\": true}}\n]\n";
        let (n, out) = rows(Shape::Document, text).unwrap();
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "{\"a\":1,\"b\":[1,2.5e3,-0],\"c\":\"x y\\n\\u00e9 ü\"}\n{\"a\":null,\"d\":{\"e\":true}}\n"
        );
        for line in out.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn an_object_is_one_row_and_ndjson_one_row_a_line() {
        assert_eq!(
            rows(Shape::Document, " {\"a\" : [ ] } ").unwrap(),
            (1, "{\"a\":[]}\n".to_owned())
        );
        assert_eq!(
            rows(Shape::Lines, "{\"a\":1}\n\n{\"a\":2}\r\n").unwrap(),
            (2, "{\"a\":1}\n{\"a\":2}\n".to_owned())
        );
        assert_eq!(rows(Shape::Document, "[]").unwrap(), (0, String::new()));
        assert_eq!(rows(Shape::Lines, "").unwrap(), (0, String::new()));
    }

    #[test]
    fn errors_name_line_and_column() {
        let at = |shape, text: &str| {
            let e = rows(shape, text).unwrap_err();
            (e.line, e.column, e.message)
        };
        let (line, column, _) = at(Shape::Document, "[\n  {\"a\": 1,}\n]");
        assert_eq!((line, column), (2, 11));
        let (line, column, message) = at(Shape::Document, "{\"é\": tru }");
        assert_eq!((line, column), (1, 10));
        assert!(message.contains("unexpected ' '"), "{message}");
        let (line, column, message) = at(Shape::Document, "[{\"a\":1}, 2]");
        assert_eq!((line, column), (1, 11));
        assert!(message.contains("element 2"), "{message}");
        let (_, _, message) = at(Shape::Document, "{\"a\":1} {\"b\":2}");
        assert!(message.contains("after the end"), "{message}");
        let (_, _, message) = at(Shape::Document, "{\"a\": \"open");
        assert!(message.contains("inside a string"), "{message}");
        let (_, _, message) = at(Shape::Document, "{\"a\": 01}");
        assert!(message.contains("expected ',' or '}'"), "{message}");
        let (_, _, message) = at(Shape::Document, "   ");
        assert!(message.contains("empty"), "{message}");
        let (line, _, message) = at(Shape::Lines, "{\"a\":1}\n[1]\n");
        assert_eq!(line, 2);
        assert!(message.contains("NDJSON"), "{message}");
        let mut checker = Checker::new(Shape::Document);
        let e = checker.feed(b"{\"a\": \"\xff\"}").unwrap_err();
        assert_eq!(e.message, "invalid UTF-8");
        let deep = "[".repeat(MAX_DEPTH + 1);
        let mut checker = Checker::new(Shape::Document);
        assert!(checker.feed(deep.as_bytes()).is_err());
    }
}
