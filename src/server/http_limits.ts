/**
 * What the HTTP layer refuses before a route sees a request, each refusal with OpenAI's error
 * body: requests not received within the body timeout (408), malformed HTTP framing (400, 431),
 * a missing Host (400), an unsupported Expect (417), bodies that are not UTF-8 JSON or
 * MessagePack (415, 400). docs/api.md lists them.
 */
import { STATUS_CODES, type IncomingMessage, type ServerOptions, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyRequest, FastifyServerOptions } from 'fastify';
import { ApiError } from './openai.ts';

/** Seconds to receive a whole request (headers and body) when not configured. */
export const DEFAULT_BODY_TIMEOUT_S = 30;
/** Seconds an idle keep-alive connection stays open when not configured (Node's default). */
export const DEFAULT_KEEP_ALIVE_TIMEOUT_S = 5;

/**
 * Fastify's and Node's server options. Timeouts: a request (headers and body) must arrive within
 * `bodyTimeoutS` seconds (Node answers 408 through clientError otherwise); an idle keep-alive
 * connection closes after `keepAliveTimeoutS`. Neither bounds a response: Node stops a request's
 * clock once its body has arrived, so a long stream is never cut. Node checks for expired
 * requests every `connectionsCheckingInterval`: a quarter of the timeout, at most 1 s. Node's own
 * 400 for an HTTP/1.1 request without Host has no body: the check is missingHost's instead.
 */
export function serverOptions(bodyTimeoutS: number, keepAliveTimeoutS: number): Pick<FastifyServerOptions, 'requestTimeout' | 'keepAliveTimeout'> & { http: ServerOptions } {
  const ms = Math.max(1, Math.round(bodyTimeoutS * 1000));
  return {
    requestTimeout: ms,
    keepAliveTimeout: Math.max(1, Math.round(keepAliveTimeoutS * 1000)),
    // Node requires headersTimeout <= requestTimeout when it builds the server
    http: { requestTimeout: ms, headersTimeout: ms, connectionsCheckingInterval: Math.min(1000, Math.max(10, Math.round(ms / 4))), requireHostHeader: false },
  };
}

interface ClientError extends Error {
  code?: string;
  /** llhttp's description of a parse error */
  reason?: string;
}

/**
 * Fastify's clientErrorHandler: the answer to a connection whose request never made it to a
 * route, written straight to the socket (there is no request object), then the socket closes.
 * A reset connection, or one whose response has begun, is only closed.
 */
export function clientErrorHandler(bodyTimeoutS: number) {
  return function (this: FastifyInstance, err: ClientError, socket: Socket): void {
    if (err.code === 'ECONNRESET' || socket.destroyed) return;
    let e: ApiError;
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
      e = new ApiError(408, `The request was not received in full within ${bodyTimeoutS} s (the server's --body-timeout).`, 'invalid_request_error', null, 'request_timeout');
    } else if (err.code === 'HPE_HEADER_OVERFLOW') {
      e = new ApiError(431, 'The request headers are too large.', 'invalid_request_error', null, 'request_header_fields_too_large');
    } else {
      e = new ApiError(400, `The HTTP request is malformed (${err.code ?? 'parse error'}): ${err.reason ?? err.message}.`, 'invalid_request_error', null, 'invalid_http_request');
    }
    this.log.debug({ code: err.code, message: err.message }, 'client error');
    const started = (socket as Socket & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent ?? false;
    if (socket.writable && !started) {
      const body = JSON.stringify(e.body());
      socket.write(`HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    }
    socket.destroy();
  };
}

const CHARSET = /;\s*charset\s*=\s*"?([^";\s]+)"?/i;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** An HTTP/1.1 request without Host (RFC 9112 requires a 400), as the routes' hook answers it. */
export const missingHost = (request: FastifyRequest): ApiError | null =>
  request.raw.httpVersion === '1.1' && request.headers.host === undefined ? new ApiError(400, 'The HTTP request is malformed: HTTP/1.1 requires a Host header.', 'invalid_request_error', null, 'invalid_http_request') : null;

/**
 * Replaces Fastify's body parsers (JSON decoded leniently, and text/plain, which would reach the
 * routes as a string) with JSON that must be UTF-8: other charsets are 415, bytes that are not
 * UTF-8 a 400 invalid_json (a lenient decoder would turn them into U+FFFD and the request would
 * pass altered). Fastify's parser still refuses __proto__ and constructor.prototype keys. Other
 * content types are 415 (see the error handler), MessagePack has its own parser. An Expect header
 * other than 100-continue gets 417 with OpenAI's body (Node's own has none).
 */
export function guardRequests(app: FastifyInstance): void {
  app.server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const body = JSON.stringify(new ApiError(417, `Unsupported Expect header '${req.headers.expect}': only 100-continue is.`, 'invalid_request_error', null, 'expectation_failed').body());
    res.writeHead(417, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body), connection: 'close' }).end(body);
  });
  const parse = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser(['application/json', 'text/plain']);
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    const charset = CHARSET.exec(request.headers['content-type'] ?? '')?.[1].toLowerCase();
    if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') {
      done(new ApiError(415, `Unsupported charset '${charset}': send JSON in UTF-8.`, 'invalid_request_error', null, 'unsupported_media_type'), undefined);
      return;
    }
    let text: string;
    try {
      text = utf8.decode(body as Buffer);
    } catch {
      done(new ApiError(400, 'We could not parse the JSON body of your request: it is not valid UTF-8.', 'invalid_request_error', null, 'invalid_json'), undefined);
      return;
    }
    parse(request, text, done);
  });
}
