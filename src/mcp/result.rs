//! A `tools/call` result, or a failed exchange, as the model reads it: text, one line per other kind of content, the structured content, the error flag; bounded.

use super::tools::McpTool;
use super::{McpError, MAX_RESULT_BYTES};
use crate::conversation::ToolOutcome;
use serde_json::Value;

/// A `tools/call` result as the model reads it: the text content in order (one block a line),
/// one line for each other kind of content, the structured content as JSON when no text block
/// carries it already, cut to [`MAX_RESULT_BYTES`]; `isError` as the error flag.
pub fn call_result(result: &Value) -> ToolOutcome {
    let is_error = result
        .get("isError")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let structured = result
        .get("structuredContent")
        .filter(|s| !s.is_null())
        .cloned();
    let mut carried = false;
    let mut lines = Vec::new();
    let content = result.get("content").and_then(Value::as_array);
    for block in content.into_iter().flatten() {
        let kind = block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let field = |name: &str| block.get(name).and_then(Value::as_str).unwrap_or_default();
        let line = match kind {
            "text" => {
                let text = field("text");
                if let Some(s) = &structured {
                    carried |= serde_json::from_str::<Value>(text).is_ok_and(|t| &t == s);
                }
                text.to_string()
            }
            "image" | "audio" => format!(
                "[{kind}: {}, {} bytes, not shown]",
                or_unknown(field("mimeType")),
                base64_len(field("data"))
            ),
            "resource_link" => format!(
                "[resource link: {} <{}>{}]",
                or_unknown(field("name")),
                field("uri"),
                mime_note(field("mimeType"))
            ),
            "resource" => summarize_resource(block.get("resource").unwrap_or(&Value::Null)),
            other => format!("[content of type \"{other}\", not shown]"),
        };
        lines.push(line);
    }
    if let Some(s) = structured.as_ref().filter(|_| !carried) {
        lines.push(s.to_string());
    }
    let text = if lines.is_empty() {
        "(the tool returned no content)".to_string()
    } else {
        lines.join("\n")
    };
    ToolOutcome {
        text: bounded_result(text),
        is_error,
        structured,
    }
}

/// What the model reads of an exchange that failed.
pub fn failed_call(tool: &McpTool, error: &McpError) -> ToolOutcome {
    ToolOutcome::text(
        format!(
            "tool {}: MCP server \"{}\" {error}",
            tool.exposed, tool.server
        ),
        true,
    )
}

fn summarize_resource(resource: &Value) -> String {
    let field = |name: &str| {
        resource
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
    };
    let size = match (resource.get("text"), resource.get("blob")) {
        (Some(Value::String(text)), _) => format!(", {} bytes of text", text.len()),
        (_, Some(Value::String(blob))) => format!(", {} bytes", base64_len(blob)),
        _ => String::new(),
    };
    format!(
        "[embedded resource: <{}>{}{size}, not shown]",
        field("uri"),
        mime_note(field("mimeType"))
    )
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() {
        "unknown"
    } else {
        s
    }
}

fn mime_note(mime: &str) -> String {
    if mime.is_empty() {
        String::new()
    } else {
        format!(" ({mime})")
    }
}

/// Bytes that `data`, base64, decodes to.
fn base64_len(data: &str) -> usize {
    let padding = data.bytes().rev().take_while(|&b| b == b'=').count();
    (data.len() * 3 / 4).saturating_sub(padding)
}

fn bounded_result(text: String) -> String {
    if text.len() <= MAX_RESULT_BYTES {
        return text;
    }
    let kept = crate::text::prefix_bytes(&text, MAX_RESULT_BYTES);
    format!(
        "{kept}\n[truncated by the gateway: the first {} bytes of {}]",
        kept.len(),
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_call_result_reads_as_text_with_its_structured_content() {
        let r = call_result(&json!({
            "content": [{ "type": "text", "text": "It is 21 °C." }, { "type": "text", "text": "Sunny." }],
            "structuredContent": { "celsius": 21 }
        }));
        assert_eq!(r.text, "It is 21 °C.\nSunny.\n{\"celsius\":21}");
        assert_eq!(r.structured, Some(json!({ "celsius": 21 })));
        assert!(!r.is_error);
        // Content that carries the structured content already (as the spec asks): not twice.
        let r = call_result(&json!({
            "content": [{ "type": "text", "text": "{ \"celsius\": 21 }" }],
            "structuredContent": { "celsius": 21 }
        }));
        assert_eq!(r.text, "{ \"celsius\": 21 }");
        let r = call_result(&json!({
            "content": [
                { "type": "image", "data": "aGVsbG8=", "mimeType": "image/png" },
                { "type": "audio", "data": "AAAA", "mimeType": "audio/wav" },
                { "type": "resource_link", "uri": "file:///a.txt", "name": "a.txt", "mimeType": "text/plain" },
                { "type": "resource", "resource": { "uri": "file:///b.md", "mimeType": "text/markdown", "text": "# B" } },
                { "type": "resource", "resource": { "uri": "file:///c.bin", "blob": "AAAA" } },
                { "type": "hologram" }
            ],
            "isError": true
        }));
        assert_eq!(
            r.text.lines().collect::<Vec<_>>(),
            [
                "[image: image/png, 5 bytes, not shown]",
                "[audio: audio/wav, 3 bytes, not shown]",
                "[resource link: a.txt <file:///a.txt> (text/plain)]",
                "[embedded resource: <file:///b.md> (text/markdown), 3 bytes of text, not shown]",
                "[embedded resource: <file:///c.bin>, 3 bytes, not shown]",
                "[content of type \"hologram\", not shown]",
            ]
        );
        assert!(r.is_error && r.structured.is_none());
        assert_eq!(
            call_result(&json!({})).text,
            "(the tool returned no content)"
        );
        let long = "é".repeat(MAX_RESULT_BYTES);
        let r = call_result(&json!({ "content": [{ "type": "text", "text": long }] }));
        assert!(r.text.len() < MAX_RESULT_BYTES + 100);
        assert!(r.text.ends_with(&format!(
            "[truncated by the gateway: the first {MAX_RESULT_BYTES} bytes of {}]",
            long.len()
        )));
        let t = McpTool {
            exposed: "docs__slow".into(),
            server: "docs".into(),
            name: "slow".into(),
            description: String::new(),
            input_schema: json!({}),
        };
        let failed = failed_call(&t, &McpError::Timeout(1500));
        assert_eq!(
            (failed.text.as_str(), failed.is_error),
            (
                "tool docs__slow: MCP server \"docs\" timed out after 1500 ms",
                true
            )
        );
    }
}
