//! The API's error answers: a status and `{"error": "...", "parameter": "..."}`.
//!
//! 400: a parameter that does not parse (or is unknown); 422: one that parses but cannot be
//! served (a range that ends before it starts); 401/403: authentication and permissions;
//! 404: nothing there; 503: the database cannot be reached; 500: everything else (logged,
//! with the details kept out of the answer).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::auth::{Permission, Unauthenticated};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub parameter: Option<String>,
}

impl ApiError {
    /// A parameter that does not parse, or is not known.
    pub fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            parameter: Some(parameter.to_owned()),
        }
    }

    /// A parameter that parses but cannot be served.
    pub fn unprocessable(parameter: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            parameter: Some(parameter.to_owned()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            parameter: None,
        }
    }

    pub fn forbidden(permission: Permission) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "your roles do not grant the {:?} permission",
                permission.name()
            ),
            parameter: None,
        }
    }

    /// A failure of ours: logged in full, answered in general terms.
    pub fn internal(error: anyhow::Error) -> ApiError {
        ApiError::backend("the database", &format!("{error:#}"))
    }

    /// A failure of a backend (`what`: the database, the lake, the file store), logged in
    /// full: 503 when it cannot be reached (worth trying again), 500 otherwise.
    pub fn backend(what: &str, text: &str) -> ApiError {
        tracing::error!(error = %text, backend = what, "request failed");
        let unavailable = text.contains("connect") || text.contains("timed out");
        ApiError {
            status: if unavailable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            },
            message: if unavailable {
                format!("{what} cannot be reached; try again shortly")
            } else {
                "internal error (logged)".to_owned()
            },
            parameter: None,
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> ApiError {
        ApiError::internal(error)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(error: tokio_postgres::Error) -> ApiError {
        ApiError::internal(error.into())
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(error: deadpool_postgres::PoolError) -> ApiError {
        ApiError::internal(anyhow::anyhow!("database connection: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match &self.parameter {
            Some(parameter) => json!({"error": self.message, "parameter": parameter}),
            None => json!({"error": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

/// 401 with the `WWW-Authenticate` challenge of RFC 6750.
pub fn unauthenticated(why: &Unauthenticated) -> Response {
    let description = why.to_string().replace('"', "'");
    let challenge = match why {
        Unauthenticated::Missing => "Bearer realm=\"reporting\"".to_owned(),
        _ => format!(
            "Bearer realm=\"reporting\", error=\"invalid_token\", error_description=\"{description}\""
        ),
    };
    let mut response = (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": why.to_string()})),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}
