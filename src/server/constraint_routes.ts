/**
 * Registered constraint sets over HTTP (docs/api.md, Registered sets): POST /v1/constraints builds
 * a set of strings or token sequences into a token automaton kept under an id, which generation
 * requests name with `constraint`; GET and DELETE /v1/constraints/{id}. Bodies are JSON or
 * MessagePack up to a limit of their own, far above the generation routes' (a million strings).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { ConstraintError } from '../constraints/automaton.ts';
import { ConstraintMemoryError, type ConstraintRegistry, type RegisteredSet } from '../constraints/registry.ts';
import type { PackedSequences } from '../constraints/trie.ts';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import { ApiError, text } from './openai.ts';

export interface ConstraintRouteOptions {
  registry: ConstraintRegistry;
  tokenizer: Tokenizer;
  /** body limit of POST /v1/constraints, bytes */
  bodyLimit: number;
  /** answers in the request's format (JSON or MessagePack) */
  send: (request: FastifyRequest, reply: FastifyReply, status: number, body: unknown) => FastifyReply;
}

const invalid = (param: string | null, message: string, code = 'invalid_value') => new ApiError(400, message, 'invalid_request_error', param, code);

const card = ({ id, created, sequences, states, edges, bytes, buildMs }: RegisteredSet) => ({ id, object: 'constraint', created, sequences, states, edges, bytes, build_ms: Math.round(buildMs * 10) / 10 });

/** MessagePack bytes as little-endian u32s (copied when unaligned, as msgpackr's views into the body may be). */
function u32s(param: string, b: Uint8Array): Uint32Array {
  if (b.byteLength % 4 !== 0) throw invalid(param, `Invalid '${param}': ${b.byteLength} bytes is not a whole number of little-endian u32s.`);
  const aligned = b.byteOffset % 4 === 0 ? b : new Uint8Array(b);
  return new Uint32Array(aligned.buffer, aligned.byteOffset, b.byteLength / 4);
}

/**
 * `token_sequences`: an array of arrays of token ids, or (MessagePack) the packed form
 * `{flat, offsets}`, two binaries of little-endian u32s: sequence i is flat[offsets[i] ..
 * offsets[i + 1]], offsets starting at 0 and ending at flat's length.
 */
function tokenSequences(v: unknown): readonly (readonly number[])[] | PackedSequences {
  const param = 'token_sequences';
  if (Array.isArray(v)) {
    const bad = v.findIndex((s) => !Array.isArray(s));
    if (bad >= 0) throw invalid(`${param}[${bad}]`, `Invalid '${param}[${bad}]': expected an array of token ids.`, 'invalid_type');
    return v as number[][];
  }
  if (typeof v === 'object' && v !== null && 'flat' in v && 'offsets' in v && v.flat instanceof Uint8Array && v.offsets instanceof Uint8Array) {
    const flat = u32s(`${param}.flat`, v.flat);
    const offsets = u32s(`${param}.offsets`, v.offsets);
    if (offsets.length === 0 || offsets[0] !== 0 || offsets[offsets.length - 1] !== flat.length) {
      throw invalid(`${param}.offsets`, `Invalid '${param}.offsets': expected sequences + 1 offsets from 0 to the ${flat.length} tokens of 'flat'.`);
    }
    return { flat, offsets };
  }
  throw invalid(param, `Invalid type for '${param}': expected an array of arrays of token ids (or, in MessagePack, {"flat", "offsets"} as binaries of little-endian u32s).`, 'invalid_type');
}

export function constraintRoutes(app: FastifyInstance, o: ConstraintRouteOptions): void {
  const { registry, tokenizer, send } = o;
  const vocabSize = tokenizer.vocab.tokens.length;

  const found = (id: string): RegisteredSet => {
    const set = registry.get(id);
    if (!set) throw new ApiError(404, `No constraint set '${id}' is registered.`, 'invalid_request_error', 'id', 'constraint_not_found');
    return set;
  };

  app.post('/v1/constraints', { bodyLimit: o.bodyLimit }, async (request, reply) => {
    const b = request.body;
    if (typeof b !== 'object' || b === null || Array.isArray(b) || b instanceof Uint8Array) throw invalid(null, 'The request body must be a JSON (or MessagePack) object.', 'invalid_body');
    const body = b as Record<string, unknown>;
    const given = ['sequences', 'token_sequences'].filter((k) => body[k] !== undefined && body[k] !== null);
    if (given.length !== 1) throw invalid(given[1] ?? null, `Give exactly one of 'sequences' (strings) and 'token_sequences' (token ids)${given.length ? `, not both` : ''}.`, given.length ? 'unsupported_value' : 'missing_required_parameter');
    const param = given[0];
    const v = body[param];
    let set: RegisteredSet;
    try {
      if (param === 'sequences') {
        if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw invalid(param, "Invalid type for 'sequences': expected an array of strings.", 'invalid_type');
        if (v.length === 0) throw invalid(param, "Invalid 'sequences': empty array; a set needs at least one member.", 'empty_array');
        v.forEach((s, i) => text(`sequences[${i}]`, s));
        set = await registry.registerStrings(v, tokenizer);
      } else {
        const seqs = tokenSequences(v);
        if ('offsets' in seqs ? seqs.offsets.length === 1 : seqs.length === 0) throw invalid(param, "Invalid 'token_sequences': empty; a set needs at least one member.", 'empty_array');
        set = registry.register(seqs, vocabSize);
      }
    } catch (err) {
      if (err instanceof ConstraintMemoryError) throw new ApiError(413, `The constraint set does not fit in this server's memory for registered sets: ${err.message}.`, 'invalid_request_error', param, 'constraint_memory_exceeded');
      if (err instanceof ConstraintError) throw invalid(param, `Invalid '${param}': ${err.message}.`);
      throw err;
    }
    return send(request, reply, 200, card(set));
  });

  app.get('/v1/constraints/:id', async (request, reply) => send(request, reply, 200, card(found((request.params as { id: string }).id))));

  app.delete('/v1/constraints/:id', async (request, reply) => {
    const { id } = found((request.params as { id: string }).id);
    registry.delete(id);
    return send(request, reply, 200, { id, object: 'constraint', deleted: true });
  });
}
