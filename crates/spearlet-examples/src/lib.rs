//! The example guest functions, embedded so that `spearlet` can register them as sample tasks on
//! first start without any external files.
//!
//! The modules are the checked-in `examples/wasm/*.wasm`, built from the sources in `examples/`
//! by `examples/build.sh` (see `examples/README.md`). They are WASI preview1 modules that follow
//! the function ABI: the input arrives on stdin, stdout is the output, stderr is the log, and the
//! exit code (or, for a reactor export, the returned `i32`) is 0 for success.
//!
//! The `reproducible` test rebuilds them and checks that the embedded bytes match their sources.

/// One embedded example function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Example {
    /// A short, unique name, also the name of its source crate under `examples/`.
    pub name: &'static str,
    /// One line saying what it does and what it expects.
    pub description: &'static str,
    /// The WASI preview1 module.
    pub wasm: &'static [u8],
    /// The export a call runs when it names none (`""` = `_start`).
    pub default_function: &'static str,
    /// An input that demonstrates it.
    pub sample_input: &'static str,
}

/// Every embedded example, in alphabetical order of name.
pub const EXAMPLES: &[Example] = &[
    Example {
        name: "counter",
        description: "Reactor with exports `increment` and `get` that print a counter kept in the \
                      instance, so repeated calls on a reused instance print 1, 2, 3, ...",
        wasm: include_bytes!("../../../examples/wasm/counter.wasm"),
        default_function: "increment",
        sample_input: "",
    },
    Example {
        name: "echo",
        description: "Copies its input to its output unchanged.",
        wasm: include_bytes!("../../../examples/wasm/echo.wasm"),
        default_function: "",
        sample_input: "Hello from spearlet!",
    },
    Example {
        name: "fail",
        description: "Logs `fail: exiting with code 3` to stderr and exits with code 3.",
        wasm: include_bytes!("../../../examples/wasm/fail.wasm"),
        default_function: "",
        sample_input: "",
    },
    Example {
        name: "hello",
        description: "Reads JSON like {\"name\":\"Ada\"} and prints {\"greeting\":\"Hello, Ada!\"} \
                      (\"Hello, world!\" without a name).",
        wasm: include_bytes!("../../../examples/wasm/hello.wasm"),
        default_function: "",
        sample_input: r#"{"name":"Ada"}"#,
    },
    Example {
        name: "memhog",
        description: "Allocates and touches N MiB (input integer, default 1024), then prints \
                      `allocated N MiB`; exits 1 if memory runs out.",
        wasm: include_bytes!("../../../examples/wasm/memhog.wasm"),
        default_function: "",
        sample_input: "64",
    },
    Example {
        name: "sleep",
        description: "Sleeps N ms (input integer; an hour otherwise) without using CPU, then \
                      prints `slept N ms`.",
        wasm: include_bytes!("../../../examples/wasm/sleep.wasm"),
        default_function: "",
        sample_input: "1000",
    },
    Example {
        name: "spin",
        description: "Busy-loops for N ms (input integer) and prints `spun N ms`; without a \
                      number it spins forever with no host calls.",
        wasm: include_bytes!("../../../examples/wasm/spin.wasm"),
        default_function: "",
        sample_input: "500",
    },
    Example {
        name: "ticker",
        description: "Prints `tick 1` to `tick N` (input integer, default 10), one line every \
                      100 ms, flushing each.",
        wasm: include_bytes!("../../../examples/wasm/ticker.wasm"),
        default_function: "",
        sample_input: "5",
    },
    Example {
        name: "wordcount",
        description: "Counts lines, words and bytes of its input and prints them as JSON with \
                      the 10 most frequent words.",
        wasm: include_bytes!("../../../examples/wasm/wordcount.wasm"),
        default_function: "",
        sample_input: "the quick brown fox jumps over the lazy dog\nthe end\n",
    },
];

/// The example called `name`, if there is one.
pub fn example(name: &str) -> Option<&'static Example> {
    EXAMPLES.iter().find(|e| e.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sorted() {
        for pair in EXAMPLES.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} / {}",
                pair[0].name,
                pair[1].name
            );
        }
        assert_eq!(EXAMPLES.len(), 9);
    }

    #[test]
    fn lookup_by_name() {
        assert_eq!(
            example("counter").map(|e| e.default_function),
            Some("increment")
        );
        assert_eq!(example("echo").map(|e| e.default_function), Some(""));
        assert!(example("nope").is_none());
    }

    #[test]
    fn modules_look_like_wasm() {
        for e in EXAMPLES {
            assert!(
                e.wasm.starts_with(b"\0asm\x01\0\0\0"),
                "{} is not a wasm module",
                e.name
            );
        }
    }
}
