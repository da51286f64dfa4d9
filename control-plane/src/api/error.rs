//! API errors in Kuma's JSON shape: `{"title", "details", "causes": [{"field", "message"}]}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mesh_api::Violation;
use mesh_store::StoreError;
use serde::Serialize;

/// An error answer of the REST API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub title: String,
    pub details: String,
    pub causes: Vec<Violation>,
}

#[derive(Serialize)]
struct Body<'a> {
    status: u16,
    title: &'a str,
    details: &'a str,
    causes: &'a [Violation],
}

impl ApiError {
    pub fn new(status: StatusCode, title: &str, details: impl Into<String>) -> ApiError {
        ApiError {
            status,
            title: title.to_owned(),
            details: details.into(),
            causes: Vec::new(),
        }
    }

    /// 400 with one cause naming the offending field.
    pub fn bad_field(field: &str, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            title: "Could not process a resource".into(),
            details: format!("{field}: {message}"),
            causes: vec![Violation {
                field: field.to_owned(),
                message,
            }],
        }
    }

    pub fn bad_request(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "Bad Request", details)
    }

    pub fn invalid(violations: Vec<Violation>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            title: "Could not process a resource".into(),
            details: "Resource is not valid".into(),
            causes: violations,
        }
    }

    pub fn not_found(details: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found", details)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "writes need the admin token: send `Authorization: Bearer <token>` (the token is in \
             the control plane's data directory, file admin-token)",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(_) => ApiError::not_found(e.to_string()),
            StoreError::AlreadyExists(_) | StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())
            }
            // A cluster node without a leader to take the write or confirm the read.
            StoreError::ForwardToLeader { .. } | StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                e.to_string(),
            ),
            _ => {
                tracing::error!(error = %e, "store failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                    e.to_string(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            status: self.status.as_u16(),
            title: &self.title,
            details: &self.details,
            causes: &self.causes,
        };
        (self.status, Json(body)).into_response()
    }
}
