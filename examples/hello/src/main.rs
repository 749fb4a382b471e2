//! `hello`: greets someone by name, to show JSON in and JSON out.
//!
//! Input: a JSON object on stdin such as `{"name":"Ada"}`. Whitespace and other keys (with any
//! JSON values) are allowed, and the name may use JSON escapes (`\"`, `\\`, `\n`, `\u00e9`, ...).
//! Output: `{"greeting":"Hello, Ada!"}` on stdout, followed by a newline. When the input is not a
//! JSON object, or has no `name` string, or the name is empty, the greeting is `Hello, world!`.
//! The greeting is escaped as a JSON string, so any name round-trips safely.
//!
//! There are no dependencies: the small JSON reader below only understands what this needs.

use std::io::Read;

fn main() {
    let mut input = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("hello: cannot read input: {err}");
        std::process::exit(1);
    }
    let name = std::str::from_utf8(&input)
        .ok()
        .and_then(name_field)
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "world".to_owned());

    let mut out = String::from("{\"greeting\":");
    push_json_string(&mut out, &format!("Hello, {name}!"));
    out.push('}');
    println!("{out}");
}

/// The value of the top-level `"name"` key if `text` is a JSON object and that value is a string.
/// When the key repeats, the last one wins (like most JSON parsers).
fn name_field(text: &str) -> Option<String> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
    };
    p.ws();
    p.expect(b'{')?;
    let mut name = None;
    p.ws();
    if p.peek() == Some(b'}') {
        p.pos += 1;
    } else {
        loop {
            p.ws();
            let key = p.string()?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            if key == "name" && p.peek() == Some(b'"') {
                name = Some(p.string()?);
            } else {
                if key == "name" {
                    name = None;
                }
                p.skip_value(0)?;
            }
            p.ws();
            match p.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.ws();
    // Trailing garbage means this was not a JSON document after all.
    if p.pos != p.s.len() {
        return None;
    }
    name
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

/// Deeper nesting than this is rejected instead of risking the (small) wasm stack.
const MAX_DEPTH: usize = 128;

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos.checked_add(word.len())?;
        (self.s.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// Parses a JSON string (the cursor is on its opening quote) and decodes its escapes.
    fn string(&mut self) -> Option<String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run of plain characters in one go; the input is valid UTF-8 and `"` and
            // `\` are ASCII, so the run ends on a character boundary.
            let start = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            out.push_str(std::str::from_utf8(&self.s[start..self.pos]).ok()?);
            match self.next()? {
                b'"' => return Some(out),
                b'\\' => {}
                _ => return None, // raw control character
            }
            let c = match self.next()? {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => self.unicode_escape()?,
                _ => return None,
            };
            out.push(c);
        }
    }

    /// The character of a `\uXXXX` escape (the cursor is after the `u`), including surrogate
    /// pairs; a lone surrogate becomes U+FFFD.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        if (0xD800..0xDC00).contains(&first) && self.s.get(self.pos..self.pos + 2) == Some(b"\\u") {
            let save = self.pos;
            self.pos += 2;
            let second = self.hex4()?;
            if (0xDC00..0xE000).contains(&second) {
                let c = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                return char::from_u32(c);
            }
            self.pos = save;
        }
        Some(char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.s.get(self.pos..self.pos + 4)?;
        let digits = std::str::from_utf8(digits).ok()?;
        let value = u32::from_str_radix(digits, 16).ok()?;
        // from_str_radix accepts a leading '+', JSON does not.
        if digits.starts_with('+') {
            return None;
        }
        self.pos += 4;
        Some(value)
    }

    /// Skips any JSON value, checking its syntax only as far as needed to find where it ends.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.string()?;
                    self.ws();
                    self.expect(b':')?;
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => continue,
                        b'}' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b'[' => {
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth + 1)?;
                    self.ws();
                    match self.next()? {
                        b',' => continue,
                        b']' => return Some(()),
                        _ => return None,
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => {
                let start = self.pos;
                while matches!(
                    self.peek(),
                    Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                ) {
                    self.pos += 1;
                }
                // Lenient about the exact number grammar, but it must at least parse as a float.
                let number = std::str::from_utf8(&self.s[start..self.pos]).ok()?;
                number.parse::<f64>().ok().map(drop)
            }
            _ => None,
        }
    }
}

/// Appends `s` to `out` as a JSON string literal, quotes included.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}
