//! Report tables: rows of cells printed as a Markdown table whose columns line up, so that
//! the same text reads well in a terminal and pasted into a document.

use std::fmt::Write as _;

/// `rows` (the first is the header) as a Markdown table, each column as wide as its widest
/// cell; a column for which `left` is true is aligned left, the others right.
pub fn markdown<R: AsRef<[String]>>(rows: &[R], left: impl Fn(usize) -> bool) -> String {
    let columns = rows.first().map_or(0, |row| row.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.as_ref().get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let text: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &width))| {
                if left(c) {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", text.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::markdown;

    #[test]
    fn columns_line_up_with_the_first_aligned_left() {
        let rows = vec![
            vec!["metric".to_owned(), "ours".to_owned()],
            vec!["p99 (ms)".to_owned(), "1.5".to_owned()],
        ];
        assert_eq!(
            markdown(&rows, |c| c == 0),
            "| metric   | ours |\n|----------|------|\n| p99 (ms) |  1.5 |\n"
        );
    }
}
