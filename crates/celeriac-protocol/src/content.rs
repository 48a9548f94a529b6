//! Which content types the decoder accepts (§1.6.1).
//!
//! Only JSON is executed. pickle is refused because unpickling runs arbitrary
//! code chosen by whoever can publish to the queue; YAML and msgpack are
//! refused because Celery's default `accept_content` is `['json']` and no
//! Celeriac task needs them. Each refusal says what to change on the producer.

use crate::DecodeError;

/// The content type Celeriac writes and executes.
pub const JSON: &str = "application/json";
/// The content encoding written with [`JSON`].
pub const UTF8: &str = "utf-8";

/// Checks a message's `content_type` and `content_encoding` properties.
///
/// ```
/// use celeriac_protocol::content::check;
/// assert!(check(Some("application/json"), Some("utf-8")).is_ok());
/// let err = check(Some("application/x-python-serialize"), Some("binary")).unwrap_err();
/// assert_eq!(err.reason(), "content_refused");
/// ```
pub fn check(
    content_type: Option<&str>,
    content_encoding: Option<&str>,
) -> Result<(), DecodeError> {
    let content_type = content_type.ok_or(DecodeError::MissingContentType)?;
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let refuse = |reason| {
        Err(DecodeError::ContentRefused {
            content_type: content_type.to_owned(),
            reason,
        })
    };
    match essence.to_ascii_lowercase().as_str() {
        JSON => {}
        "application/x-python-serialize" => {
            return refuse(
                "pickle bodies are executable Python code, so accepting them would let anyone \
                 who can publish to the queue run code in the worker; set the producer's \
                 task_serializer='json'",
            );
        }
        "application/x-yaml" => {
            return refuse(
                "YAML bodies are not accepted; set the producer's task_serializer='json'",
            );
        }
        "application/x-msgpack" => {
            return refuse(
                "msgpack bodies are not accepted; set the producer's task_serializer='json'",
            );
        }
        _ => {
            return refuse(
                "not a Celery task serializer Celeriac accepts; only application/json is executed",
            );
        }
    }
    match content_encoding.map(str::to_ascii_lowercase).as_deref() {
        None | Some("utf-8" | "utf8") => Ok(()),
        Some(_) => Err(DecodeError::ContentRefused {
            content_type: format!(
                "{content_type}; encoding={}",
                content_encoding.unwrap_or_default()
            ),
            reason: "JSON bodies must be utf-8 encoded, as kombu writes them",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_with_parameters_is_accepted() {
        assert!(check(Some("application/json; charset=utf-8"), None).is_ok());
        assert!(check(Some("Application/JSON"), Some("UTF-8")).is_ok());
    }

    #[test]
    fn everything_else_is_refused_with_a_reason() {
        for ct in [
            "application/x-yaml",
            "application/x-msgpack",
            "application/data",
            "text/plain",
        ] {
            let err = check(Some(ct), Some("utf-8")).unwrap_err();
            assert_eq!(err.reason(), "content_refused", "{ct}");
        }
        assert_eq!(
            check(None, None).unwrap_err(),
            DecodeError::MissingContentType
        );
        assert!(check(Some(JSON), Some("binary")).is_err());
    }
}
