//! A static check of the kernel sources: every kernel waits for the kernel before it.
//!
//! Every launch carries the programmatic-dependent-launch attribute on sm_90 (`ops::launch`), so a
//! kernel may start while its predecessor still runs; one that never executes `griddepcontrol.wait`
//! (kernels/common.cuh: `pdl_wait()` or `pdl_enter()`) reads its inputs half-written and lets the
//! kernels after it run before its predecessor ends. The dequantization kernel had no wait and made
//! asynchronous decode steps of quantized models read token ids still being fed (session 13). The
//! check: a device function *waits* if its body calls `pdl_wait()` / `pdl_enter()` or a function that
//! waits; every `__global__` function must wait.

use std::collections::{HashMap, HashSet};

use crate::compile::{ALL_KERNELS, HEADERS};

/// The text of the brace-balanced body that starts at the first `{` at or after `from`.
fn body_at(src: &str, from: usize) -> Option<&str> {
    let open = from + src[from..].find('{')?;
    let mut depth = 0usize;
    for (i, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&src[open..open + i + 1]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The name of the function declared in `decl` (up to its body), before its parameter list
/// (past a `__launch_bounds__(..)`).
fn declared_name(decl: &str) -> Option<&str> {
    let from = match decl.find("__launch_bounds__") {
        Some(lb) => lb + decl[lb..].find(')')? + 1,
        None => 0,
    };
    let paren = from + decl[from..].find('(')?;
    decl[..paren]
        .rsplit(|c: char| !(c.is_alphanumeric() || c == '_' || c == '#'))
        .find(|w| !w.is_empty())
}

/// (name, body) of every function marked `marker` (`__device__` or `__global__`) in `src`.
fn functions<'a>(src: &'a str, marker: &str) -> Vec<(String, &'a str)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = src[at..].find(marker) {
        let start = at + i;
        at = start + marker.len();
        // a declaration ends at its body's `{`; a `;` first means a prototype or a variable
        let rest = &src[start..];
        let (Some(brace), semi) = (rest.find('{'), rest.find(';')) else {
            continue;
        };
        if semi.is_some_and(|s| s < brace) {
            continue;
        }
        let (Some(name), Some(body)) = (declared_name(&rest[..brace]), body_at(src, start)) else {
            continue;
        };
        out.push((name.replace("##", ""), body));
    }
    out
}

fn calls(body: &str, name: &str) -> bool {
    body.match_indices(name).any(|(i, _)| {
        let before = body[..i].chars().next_back();
        let after = body[i + name.len()..].trim_start().chars().next();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_') && matches!(after, Some('(' | '<'))
    })
}

#[test]
fn every_kernel_waits_for_its_predecessor() {
    let sources = ALL_KERNELS
        .iter()
        .map(|k| k.source)
        .chain(HEADERS.iter().map(|h| h.1));
    // device functions by name (overloads and templates merged: any body that waits counts)
    let mut device: HashMap<String, Vec<&str>> = HashMap::new();
    for src in sources {
        for (name, body) in functions(src, "__device__") {
            device.entry(name).or_default().push(body);
        }
    }
    let mut waits: HashSet<String> = ["pdl_wait", "pdl_enter"].map(String::from).into();
    loop {
        let grown: Vec<String> = device
            .iter()
            .filter(|(n, bodies)| {
                !waits.contains(*n) && bodies.iter().any(|b| waits.iter().any(|w| calls(b, w)))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if grown.is_empty() {
            break;
        }
        waits.extend(grown);
    }
    let mut missing = Vec::new();
    let mut kernels = 0;
    for k in ALL_KERNELS {
        for (name, body) in functions(k.source, "__global__") {
            kernels += 1;
            if !waits.iter().any(|w| calls(body, w)) {
                missing.push(format!("{}: {name}", k.file));
            }
        }
    }
    assert!(
        kernels > 20,
        "found only {kernels} kernels: the parser is broken"
    );
    assert!(
        missing.is_empty(),
        "kernels that never call pdl_wait()/pdl_enter() (directly or through a device function): {missing:?}"
    );
}

#[test]
fn the_check_sees_a_kernel_without_a_wait() {
    let src = "__device__ void helper(int *x) { pdl_wait(); x[0] = 1; }\n\
               extern \"C\" __global__ void __launch_bounds__(32) good(int *x) { helper(x); }\n\
               extern \"C\" __global__ void bad(int *x) { x[0] = 2; }";
    let globals = functions(src, "__global__");
    let names: Vec<&str> = globals.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["good", "bad"]);
    assert!(calls(globals[0].1, "helper") && !calls(globals[1].1, "helper"));
    assert_eq!(functions(src, "__device__")[0].0, "helper");
}
