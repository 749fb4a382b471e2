//! The example guest functions, embedded so that `spearlet` can register them as sample tasks on
//! first start without any external files.
//!
//! The binaries are the checked-in files under `examples/wasm/`, built from the sources in
//! `examples/` by `examples/build.sh` (see `examples/README.md`). Most are WASI preview1 core
//! modules (`examples/wasm/<name>.wasm`, target `wasm32-wasip1`); the rest are WASI 0.2
//! components (`examples/wasm/p2/*.wasm`, target `wasm32-wasip2`; see
//! [`Example::is_component`]):
//!
//! - the command guests (modules, and `echo-component`) follow the function ABI: the input
//!   arrives on stdin, stdout is the output, stderr is the log, and the exit code (or, for the
//!   `counter` reactor's exports, the returned `i32`) is 0 for success. A command component
//!   exports `wasi:cli/run`; Rust's `std::process::exit(n)` reaches the host there as
//!   `wasi:cli/exit.exit(err)` for any `n != 0`, so the code itself is lost (a host sees 1);
//! - `http-echo` is a `wasi:http/proxy` component: it exports `wasi:http/incoming-handler` and
//!   serves HTTP requests instead (its routes are in `examples/http-echo/src/lib.rs`).
//!
//! The `reproducible` test rebuilds them and checks that the embedded bytes match their sources.

/// One embedded example function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Example {
    /// A short, unique name; the name of its source crate under `examples/`, except for
    /// `echo-component` (the `echo` crate built for `wasm32-wasip2`).
    pub name: &'static str,
    /// One line saying what it does and what it expects.
    pub description: &'static str,
    /// The committed build this embeds, relative to `examples/`: `wasm/<name>.wasm` for a WASI
    /// preview1 module, `wasm/p2/<crate>.wasm` for a WASI 0.2 component.
    pub path: &'static str,
    /// The WASI preview1 module or WASI 0.2 component (see [`Example::is_component`]).
    pub wasm: &'static [u8],
    /// The export a call runs when it names none (`""` = `_start` for a module, `wasi:cli/run`
    /// for a command component; `""` for `http-echo`, which has no function exports).
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
        path: "wasm/counter.wasm",
        wasm: include_bytes!("../../../examples/wasm/counter.wasm"),
        default_function: "increment",
        sample_input: "",
    },
    Example {
        name: "echo",
        description: "Copies its input to its output unchanged.",
        path: "wasm/echo.wasm",
        wasm: include_bytes!("../../../examples/wasm/echo.wasm"),
        default_function: "",
        sample_input: "Hello from spearlet!",
    },
    Example {
        name: "echo-component",
        description: "The `echo` guest built for wasm32-wasip2, a WASI 0.2 command component \
                      (world wasi:cli/command): copies its input to its output unchanged.",
        path: "wasm/p2/echo.wasm",
        wasm: include_bytes!("../../../examples/wasm/p2/echo.wasm"),
        default_function: "",
        sample_input: "Hello from a component!",
    },
    Example {
        name: "fail",
        description: "Logs `fail: exiting with code 3` to stderr and exits with code 3.",
        path: "wasm/fail.wasm",
        wasm: include_bytes!("../../../examples/wasm/fail.wasm"),
        default_function: "",
        sample_input: "",
    },
    Example {
        name: "hello",
        description: "Reads JSON like {\"name\":\"Ada\"} and prints {\"greeting\":\"Hello, Ada!\"} \
                      (\"Hello, world!\" without a name).",
        path: "wasm/hello.wasm",
        wasm: include_bytes!("../../../examples/wasm/hello.wasm"),
        default_function: "",
        sample_input: r#"{"name":"Ada"}"#,
    },
    Example {
        name: "http-echo",
        description: "A wasi:http/proxy component (exports wasi:http/incoming-handler): \
                      GET /hello, POST /echo streams the body back, GET /headers, \
                      GET /status/<code>, GET /fetch?url=<url> (outgoing request), \
                      GET /no-response, GET /trap; 404 otherwise.",
        path: "wasm/p2/http-echo.wasm",
        wasm: include_bytes!("../../../examples/wasm/p2/http-echo.wasm"),
        default_function: "",
        sample_input: "",
    },
    Example {
        name: "memhog",
        description: "Allocates and touches N MiB (input integer, default 1024), then prints \
                      `allocated N MiB`; exits 1 if memory runs out.",
        path: "wasm/memhog.wasm",
        wasm: include_bytes!("../../../examples/wasm/memhog.wasm"),
        default_function: "",
        sample_input: "64",
    },
    Example {
        name: "sleep",
        description: "Sleeps N ms (input integer; an hour otherwise) without using CPU, then \
                      prints `slept N ms`.",
        path: "wasm/sleep.wasm",
        wasm: include_bytes!("../../../examples/wasm/sleep.wasm"),
        default_function: "",
        sample_input: "1000",
    },
    Example {
        name: "spin",
        description: "Busy-loops for N ms (input integer) and prints `spun N ms`; without a \
                      number it spins forever with no host calls.",
        path: "wasm/spin.wasm",
        wasm: include_bytes!("../../../examples/wasm/spin.wasm"),
        default_function: "",
        sample_input: "500",
    },
    Example {
        name: "ticker",
        description: "Prints `tick 1` to `tick N` (input integer, default 10), one line every \
                      100 ms, flushing each.",
        path: "wasm/ticker.wasm",
        wasm: include_bytes!("../../../examples/wasm/ticker.wasm"),
        default_function: "",
        sample_input: "5",
    },
    Example {
        name: "wordcount",
        description: "Counts lines, words and bytes of its input and prints them as JSON with \
                      the 10 most frequent words.",
        path: "wasm/wordcount.wasm",
        wasm: include_bytes!("../../../examples/wasm/wordcount.wasm"),
        default_function: "",
        sample_input: "the quick brown fox jumps over the lazy dog\nthe end\n",
    },
];

impl Example {
    /// Whether this is a WASI 0.2 component (`wasm32-wasip2`) rather than a WASI preview1 core
    /// module: the binary's header says so (layer 1 with version 0x0d, where a core module has
    /// layer 0, version 1).
    pub fn is_component(&self) -> bool {
        self.wasm.starts_with(COMPONENT_HEADER)
    }
}

/// The first 8 bytes of a core module: magic `\0asm`, version 1, layer 0.
pub const MODULE_HEADER: &[u8] = b"\0asm\x01\0\0\0";
/// The first 8 bytes of a component: magic `\0asm`, version 0x0d, layer 1.
pub const COMPONENT_HEADER: &[u8] = b"\0asm\x0d\0\x01\0";

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
        assert_eq!(EXAMPLES.len(), 11);
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
    fn modules_and_components_look_like_wasm() {
        for e in EXAMPLES {
            let (header, kind) = if e.path.starts_with("wasm/p2/") {
                (COMPONENT_HEADER, "component")
            } else {
                (MODULE_HEADER, "core module")
            };
            assert!(
                e.wasm.starts_with(header),
                "{} is not a wasm {kind}",
                e.name
            );
            assert_eq!(e.is_component(), kind == "component", "{}", e.name);
        }
        let components: Vec<&str> = EXAMPLES
            .iter()
            .filter(|e| e.is_component())
            .map(|e| e.name)
            .collect();
        assert_eq!(components, ["echo-component", "http-echo"]);
    }
}
