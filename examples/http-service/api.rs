//! The HTTP side: routes, request bodies, responses, and the status each failure gets.

use serde_json::{Value, json};
use wstd::http::body::util::{BodyExt, LengthLimitError, Limited};
use wstd::http::{Body, Error as HttpError, HeaderValue, Method, Request, Response, StatusCode};

use crate::store::{self, Item, StoreError};

/// The largest request body read; a bigger one gets 413 without being read to the end.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// The longest item name accepted, in characters.
const MAX_NAME_CHARS: usize = 1000;

/// What a request asks for, before its method is checked.
enum Route {
    /// `/items`
    Items,
    /// `/items/{id}`, the id as sent.
    Item(String),
}

/// A successful answer.
struct Reply {
    status: StatusCode,
    body: Value,
    location: Option<String>,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
            location: None,
        }
    }
}

/// Why a request failed. Every variant maps to one status and a fixed text; only [`StoreError`]'s details
/// reach the log, never a response.
enum Failure {
    BadRequest(String),
    NotFound(&'static str),
    MethodNotAllowed { allow: &'static str },
    PayloadTooLarge,
    UnsupportedMediaType,
    Store(StoreError),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::NotFound(_) => StatusCode::NOT_FOUND,
            Failure::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Failure::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Failure::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Store(StoreError::Failed(_) | StoreError::Other(_)) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::BadRequest(message) => message.clone(),
            Failure::NotFound(what) => format!("{what} not found"),
            Failure::MethodNotAllowed { allow } => format!("this path only takes {allow}"),
            Failure::PayloadTooLarge => format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            Failure::UnsupportedMediaType => "the body must be application/json".to_string(),
            Failure::Store(StoreError::Unavailable(_)) => {
                "the database is unavailable; try again later".to_string()
            }
            Failure::Store(StoreError::Failed(_) | StoreError::Other(_)) => {
                "internal error".to_string()
            }
        }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

/// Answers one request and logs one line for it on stderr (with the cause of a 5xx).
pub(crate) async fn serve(request: Request<Body>) -> Result<Response<Body>, HttpError> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = Response::builder();
    let (status, body) = match answer(request).await {
        Ok(reply) => {
            if let Some(location) = reply.location {
                response = response.header("location", location);
            }
            (reply.status, reply.body)
        }
        Err(failure) => {
            if let Failure::Store(cause) = &failure {
                crate::log_line(format_args!("{method} {path}: {cause}"));
            }
            if let Failure::MethodNotAllowed { allow } = failure {
                response = response.header("allow", allow);
            }
            (failure.status(), json!({ "error": failure.message() }))
        }
    };
    crate::log_line(format_args!("{method} {path} -> {}", status.as_u16()));
    json_response(response.status(status), &body)
}

fn json_response(
    builder: wstd::http::response::Builder,
    body: &Value,
) -> Result<Response<Body>, wstd::http::Error> {
    let mut text = body.to_string();
    text.push('\n');
    Ok(builder
        .header("content-type", "application/json")
        .header("content-length", text.len())
        .body(Body::from(text))?)
}

async fn answer(request: Request<Body>) -> Result<Reply, Failure> {
    match (route(request.uri().path())?, request.method()) {
        (Route::Items, &Method::GET) => {
            let items = store::list_items().await?;
            Ok(Reply::ok(Value::Array(
                items.iter().map(item_json).collect(),
            )))
        }
        (Route::Items, &Method::POST) => {
            let name = read_new_item(request).await?;
            let item = store::create_item(&name).await?;
            Ok(Reply {
                status: StatusCode::CREATED,
                location: Some(format!("/items/{}", item.id)),
                body: item_json(&item),
            })
        }
        (Route::Items, _) => Err(Failure::MethodNotAllowed { allow: "GET, POST" }),
        (Route::Item(id), &Method::GET) => {
            let id = parse_id(&id)?;
            match store::get_item(id).await? {
                Some(item) => Ok(Reply::ok(item_json(&item))),
                None => Err(Failure::NotFound("item")),
            }
        }
        (Route::Item(_), _) => Err(Failure::MethodNotAllowed { allow: "GET" }),
    }
}

fn route(path: &str) -> Result<Route, Failure> {
    match path.strip_prefix("/items") {
        Some("") => Ok(Route::Items),
        Some(rest) => match rest.strip_prefix('/') {
            Some(id) if !id.is_empty() && !id.contains('/') => Ok(Route::Item(id.to_string())),
            _ => Err(Failure::NotFound("path")),
        },
        None => Err(Failure::NotFound("path")),
    }
}

/// An item id: digits only (no sign, no spaces), 1 up to i64's maximum.
fn parse_id(id: &str) -> Result<i64, Failure> {
    let bad = || Failure::BadRequest("the item id must be a positive integer".to_string());
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match id.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(bad()),
    }
}

/// The name from a POST body `{"name": "..."}`.
async fn read_new_item(request: Request<Body>) -> Result<String, Failure> {
    check_content_type(request.headers().get("content-type"))?;
    let limited = Limited::new(request.into_body().into_boxed_body(), MAX_BODY_BYTES);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(Failure::PayloadTooLarge);
        }
        Err(_) => {
            return Err(Failure::BadRequest(
                "the request body could not be read".to_string(),
            ));
        }
    };
    parse_new_item(&bytes).map_err(Failure::BadRequest)
}

/// No Content-Type is taken as JSON (curl users forget it); any other type than JSON is refused.
fn check_content_type(value: Option<&HeaderValue>) -> Result<(), Failure> {
    let Some(value) = value else {
        return Ok(());
    };
    let media_type = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    match media_type {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(Failure::UnsupportedMediaType),
    }
}

/// Checks the body's shape; the error is the 400's text.
fn parse_new_item(bytes: &[u8]) -> Result<String, String> {
    let shape = || r#"the body must be a JSON object like {"name": "..."}"#.to_string();
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(bytes) else {
        return Err(shape());
    };
    let name = match fields.remove("name") {
        Some(Value::String(name)) => name,
        Some(_) => return Err(r#""name" must be a string"#.to_string()),
        None => return Err(shape()),
    };
    if !fields.is_empty() {
        return Err(r#"the body may only have a "name""#.to_string());
    }
    if name.trim().is_empty() {
        return Err(r#""name" must not be empty"#.to_string());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            r#""name" is longer than {MAX_NAME_CHARS} characters"#
        ));
    }
    // PostgreSQL's text cannot hold NUL; refuse it here rather than answer 500 for the server's error.
    if name.contains('\0') {
        return Err(r#""name" must not contain NUL characters"#.to_string());
    }
    Ok(name)
}

fn item_json(item: &Item) -> Value {
    json!({ "id": item.id, "name": item.name })
}
