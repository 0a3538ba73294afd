//! ToolCallSplit over every chunking, bare calls, limits (tool_calls.rs).

use super::*;

fn whole(pieces: &[&str]) -> Split {
    let mut s = ToolCallSplit::new("x", names());
    let mut all = Split::default();
    let mut parts: Vec<Split> = pieces.iter().map(|p| s.push(p)).collect();
    parts.push(s.finish());
    for p in parts {
        all.content += &p.content;
        for d in &p.calls {
            merge_delta(&mut all.calls, d);
        }
    }
    all
}

fn names() -> Vec<String> {
    vec!["get_weather".into(), "get_time".into(), "f".into()]
}

const TEXT: &str = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";

#[test]
fn blocks_become_calls_whatever_the_pieces() {
    let want = whole(&[TEXT]);
    assert_eq!(want.content, "Let me check.\n\n");
    assert_eq!(want.calls.len(), 2);
    assert_eq!(want.calls[0]["function"]["name"], "get_weather");
    // the arguments as the model wrote them
    assert_eq!(
        want.calls[0]["function"]["arguments"],
        "{\"city\": \"Paris\"}"
    );
    assert_eq!(want.calls[1]["index"], 1);
    assert_eq!(want.calls[1]["function"]["arguments"], "{}");
    let chars: Vec<String> = TEXT.chars().map(String::from).collect();
    let refs: Vec<&str> = chars.iter().map(|s| s.as_str()).collect();
    assert_eq!(whole(&refs), want, "one character at a time");
}

#[test]
fn a_call_streams_its_name_then_its_arguments() {
    let mut s = ToolCallSplit::new("x", names());
    let first = s.push("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci");
    assert_eq!(first.calls.len(), 1);
    assert_eq!(first.calls[0]["function"]["name"], "get_weather");
    assert_eq!(first.calls[0]["id"], "call_x_0");
    assert_eq!(first.calls[0]["function"]["arguments"], "{\"ci");
    let more = s.push("ty\": \"Paris\"}");
    // the arguments end with their JSON value: the call object's `}` is not theirs
    assert_eq!(
        more.calls,
        vec![json!({"index": 0, "function": {"arguments": "ty\": \"Paris\"}"}})]
    );
    let end = s.push("}\n</tool_call>");
    assert_eq!(end, Split::default());
    assert_eq!(s.calls_made(), 1);
}

#[test]
fn other_shapes_and_cut_off_calls() {
    // keys in another order: the call comes whole when the block closes
    let c = whole(&["<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"f\"}</tool_call>"]);
    assert_eq!(
        c.calls[0]["function"],
        json!({"name": "f", "arguments": "{\"a\":1}"})
    );
    // a call cut off by max_tokens keeps the arguments written so far
    let c = whole(&["<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": [1, 2"]);
    assert_eq!(c.calls[0]["function"]["arguments"], "{\"a\": [1, 2");
    assert_eq!(c.content, "");
}

#[test]
fn a_bare_call_naming_a_tool_is_a_call() {
    let bare = " {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}";
    let chars: Vec<String> = bare.chars().map(String::from).collect();
    let refs: Vec<&str> = chars.iter().map(|s| s.as_str()).collect();
    for c in [whole(&[bare]), whole(&refs)] {
        assert_eq!(c.content, "");
        assert_eq!(
            c.calls[0]["function"],
            json!({"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"})
        );
    }
    // a bare call ends with its object: what follows is text
    let c = whole(&[bare, "\n{\"temp\": 21}"]);
    assert_eq!(c.calls[0]["function"]["arguments"], "{\"city\": \"Paris\"}");
    assert_eq!(c.content, "\n{\"temp\": 21}");
    // JSON that is not a call of an offered tool, or text before it, is content
    for text in [
        "{\"name\": \"Bob\", \"arguments\": {}}",
        "{\"a\": 1}",
        "Here: {\"name\": \"f\", \"arguments\": {}}",
    ] {
        assert_eq!(
            whole(&[text]),
            Split {
                content: text.into(),
                calls: vec![]
            }
        );
    }
}

#[test]
fn past_the_limit_blocks_are_dropped() {
    let mut s = ToolCallSplit::new("x", names()).at_most(1);
    let chars: Vec<String> = TEXT.chars().map(String::from).collect();
    let mut calls = Vec::new();
    let mut content = String::new();
    for c in &chars {
        let p = s.push(c);
        content += &p.content;
        calls.extend(p.calls);
    }
    content += &s.finish().content;
    assert_eq!(s.calls_made(), 1);
    assert!(calls.iter().all(|d| d["index"] == 0), "{calls:?}");
    assert_eq!(content, "Let me check.\n\n");
}

#[test]
fn text_that_is_not_a_call_stays_content() {
    assert_eq!(
        whole(&["a <tool_c", "all> not json </tool_call> b"]).content,
        "a <tool_call> not json </tool_call> b"
    );
    assert_eq!(
        whole(&["<tool_call>{\"name\": \"f\""]).content,
        "<tool_call>{\"name\": \"f\""
    );
    assert_eq!(whole(&["x < y"]).content, "x < y");
}
