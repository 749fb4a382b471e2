//! `wordcount`: counts lines, words and bytes of a text and lists its most frequent words.
//!
//! Input: text on stdin (invalid UTF-8 sequences are read as U+FFFD, which is not a word
//! character).
//! Output: one line of JSON on stdout:
//!
//! ```text
//! {"lines":L,"words":W,"bytes":B,"top":[["the",4],["a",2],...]}
//! ```
//!
//! - `bytes` is the input length in bytes.
//! - `lines` is the number of newline-terminated lines, plus one for a final line without a
//!   newline (so `a\nb` and `a\nb\n` both have 2 lines, and empty input has 0).
//! - A word is a maximal run of alphanumeric characters, where an apostrophe between two
//!   alphanumerics also counts (`don't` is one word). Words are lowercased before counting.
//!   `words` is the number of words.
//! - `top` holds up to 10 `[word, count]` pairs, most frequent first; equal counts are ordered
//!   alphabetically (by code point), so the output is fully deterministic.

use std::collections::BTreeMap;
use std::io::Read;

const TOP: usize = 10;

fn main() {
    let mut input = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("wordcount: cannot read input: {err}");
        std::process::exit(1);
    }
    println!("{}", report(&input));
}

fn report(input: &[u8]) -> String {
    let bytes = input.len();
    let newlines = input.iter().filter(|&&b| b == b'\n').count();
    let lines = newlines + usize::from(input.last().is_some_and(|&b| b != b'\n'));

    // A BTreeMap (not a HashMap) keeps iteration order, and so the output, independent of any
    // random seed.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut words = 0;
    let text = String::from_utf8_lossy(input);
    let mut chars = text.chars().peekable();
    let mut word = String::new();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if c == '\'' && !word.is_empty() && chars.peek().is_some_and(|n| n.is_alphanumeric())
        {
            word.push(c);
        } else if !word.is_empty() {
            words += 1;
            *counts.entry(std::mem::take(&mut word)).or_default() += 1;
        }
    }
    if !word.is_empty() {
        words += 1;
        *counts.entry(word).or_default() += 1;
    }

    let mut top: Vec<(String, usize)> = counts.into_iter().collect();
    // Stable sort of an alphabetically ordered list: ties stay alphabetical.
    top.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
    top.truncate(TOP);

    let mut out = format!("{{\"lines\":{lines},\"words\":{words},\"bytes\":{bytes},\"top\":[");
    for (i, (word, count)) in top.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        push_json_string(&mut out, word);
        out.push_str(&format!(",{count}]"));
    }
    out.push_str("]}");
    out
}

/// Appends `s` to `out` as a JSON string literal, quotes included. (Words are alphanumeric, but
/// being exact costs nothing.)
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
