//! Form bodies (`application/x-www-form-urlencoded`, `multipart/form-data`), as Twilio,
//! Slack and legacy Mailgun send them: their fields in order, and one flat JSON object
//! of strings made from them (a repeated name becomes an array of its values).

use serde_json::{Map, Value};

/// Most fields a form body may have. Vendors send a few dozen (Twilio, Mailgun, Slack);
/// a body of `a&a&a…` would otherwise become millions of small strings, built before
/// the signature of the schemes that sign fields is checked.
pub const MAX_FIELDS: usize = 10_000;

/// Bytes a form's fields are charged to the memory budget before they are built: the
/// decoded text (at most the body) and two strings per field, twice (Twilio sorts a
/// copy of them to check the signature).
pub fn memory_estimate(body_bytes: usize, fields: usize) -> usize {
    2 * (body_bytes + fields * 128)
}

/// How many fields an url-encoded body has (pieces between `&`), counted without
/// decoding it.
pub fn count_urlencoded(body: &[u8]) -> usize {
    memchr::memchr_iter(b'&', body).count() + 1
}

/// An upper bound of the parts of a multipart body: occurrences of its boundary.
pub fn count_multipart(body: &[u8], boundary: &str) -> usize {
    memchr::memmem::find_iter(body, boundary.as_bytes()).count()
}

/// The fields of an url-encoded body, in order.
pub fn urlencoded(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// The fields of a multipart body with `boundary`, in order. A part must be text (a
/// file upload of UTF-8 text is kept as its text).
pub async fn multipart(
    body: bytes::Bytes,
    boundary: &str,
) -> Result<Vec<(String, String)>, String> {
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut fields = Vec::new();
    loop {
        let field = match parts.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return Ok(fields),
            Err(e) => return Err(format!("the multipart body is malformed: {e}")),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let data = field
            .bytes()
            .await
            .map_err(|e| format!("the multipart body is malformed: {e}"))?;
        let text = String::from_utf8(data.to_vec()).map_err(|_| {
            format!("multipart field `{name}` is not UTF-8 text; Sluice stores form fields as text")
        })?;
        fields.push((name, text));
    }
}

/// The fields of a form body stored without its content type (a webhook's dead
/// letter), as one object: multipart when it starts with a boundary line (`--…`),
/// url-encoded when it has `=`; `None` otherwise.
pub fn from_body(body: &[u8]) -> Option<Value> {
    use futures_util::FutureExt;
    if let Some(rest) = body.strip_prefix(b"--") {
        let line = rest.split(|b| *b == b'\r' || *b == b'\n').next()?;
        let boundary = std::str::from_utf8(line).ok()?.to_owned();
        // An in-memory body: the parse never waits.
        let fields = multipart(bytes::Bytes::copy_from_slice(body), &boundary)
            .now_or_never()?
            .ok()?;
        return Some(to_object(&fields));
    }
    memchr::memchr(b'=', body).map(|_| to_object(&urlencoded(body)))
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    multer::parse_boundary(content_type).ok()
}

/// One flat object: each field a string, a repeated name an array of its values in order.
pub fn to_object(fields: &[(String, String)]) -> Value {
    let mut object = Map::new();
    for (name, value) in fields {
        let value = Value::String(value.clone());
        match object.get_mut(name) {
            None => {
                object.insert(name.clone(), value);
            }
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                object.insert(name.clone(), Value::Array(vec![first, value]));
            }
        }
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_become_arrays_in_order() {
        let fields = urlencoded(b"To=%2B1555&Media=a&Body=hi+there&Media=b&Media=c");
        assert_eq!(
            to_object(&fields),
            serde_json::json!({"To": "+1555", "Media": ["a", "b", "c"], "Body": "hi there"})
        );
    }

    #[tokio::test]
    async fn multipart_fields_are_read_as_text() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"event\"\r\n\r\ndelivered\r\n--XyZ\r\nContent-Disposition: form-data; name=\"tag\"\r\n\r\na\r\n--XyZ\r\nContent-Disposition: form-data; name=\"tag\"\r\n\r\nb\r\n--XyZ--\r\n";
        let fields = multipart(bytes::Bytes::from(body), "XyZ").await.unwrap();
        assert_eq!(
            to_object(&fields),
            serde_json::json!({"event": "delivered", "tag": ["a", "b"]})
        );
    }
}
