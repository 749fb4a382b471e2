// A `wasi:http/proxy` incoming handler in JavaScript, built with ComponentizeJS (StarlingMonkey).
//
//   GET  /hello   -> 200 text/plain "Hello from JavaScript!\n"
//   POST /echo    -> 200 with the request body; content-type copied
//                    (application/octet-stream when the request has none)
//   anything else -> 404 "not found: <path>\n"
//
// It implements wasi:http/incoming-handler itself (the `incomingHandler` export) with the
// wasi:http/types resources, rather than StarlingMonkey's `addEventListener('fetch', ...)`: the
// fetch event serves only one request per instance (StarlingMonkey issue #247), this serves any
// number, so the host may keep an instance warm.
//
// Build: scripts/build-polyglot-components.sh. By hand: put the WASI 0.2.3 WIT in wit/deps/ (the
// wit/deps/ of the crates.io package `wasi` 0.14.0+wasi-0.2.3; not checked in), then
// `npm ci && npm run build`.

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.3';

const TEXT = 'text/plain; charset=utf-8';
// wasi:io's blocking-write-and-flush takes at most 4096 bytes per call.
const CHUNK = 4096;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export const incomingHandler = {
  handle(request, responseOut) {
    const method = request.method().tag;
    const path = (request.pathWithQuery() ?? '/').split('?')[0];

    if (method === 'get' && path === '/hello') {
      respond(responseOut, 200, TEXT, encoder.encode('Hello from JavaScript!\n'));
    } else if (method === 'post' && path === '/echo') {
      const headers = request.headers();
      const types = headers.get('content-type');
      headers[Symbol.dispose]();
      const contentType = types.length > 0 ? decoder.decode(types[0]) : 'application/octet-stream';
      respond(responseOut, 200, contentType, readBody(request));
    } else {
      respond(responseOut, 404, TEXT, encoder.encode(`not found: ${path}\n`));
    }
  },
};

// The whole request body (this example buffers it).
function readBody(request) {
  const body = request.consume();
  const stream = body.stream();
  const parts = [];
  let size = 0;
  for (;;) {
    let chunk;
    try {
      chunk = stream.blockingRead(65536n);
    } catch (e) {
      if (streamClosed(e)) break;
      throw e;
    }
    parts.push(chunk);
    size += chunk.length;
  }
  // The stream is a child of the body: drop it first.
  stream[Symbol.dispose]();
  body[Symbol.dispose]();
  const all = new Uint8Array(size);
  let offset = 0;
  for (const part of parts) {
    all.set(part, offset);
    offset += part.length;
  }
  return all;
}

// A wasi:io stream-error `closed` (the end of the stream), as the bindings throw it.
function streamClosed(e) {
  return (e?.payload ?? e)?.tag === 'closed';
}

function respond(responseOut, status, contentType, bytes) {
  const response = new OutgoingResponse(
    Fields.fromList([
      ['content-type', encoder.encode(contentType)],
      ['content-length', encoder.encode(String(bytes.length))],
    ]),
  );
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const stream = body.write();
  for (let start = 0; start < bytes.length; start += CHUNK) {
    stream.blockingWriteAndFlush(bytes.subarray(start, start + CHUNK));
  }
  stream[Symbol.dispose]();
  OutgoingBody.finish(body, undefined);
}
