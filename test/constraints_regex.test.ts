import { join } from 'node:path';
import { Ajv } from 'ajv';
import { JS, NFA, isDisjointWith } from 'refa';
import { beforeAll, describe, expect, it } from 'vitest';
import { type TokenAutomaton, allowedTokens, checkAutomaton, nextState, tokensToAccept } from '../src/constraints/automaton.ts';
import { compileJsonSchema, JSON_DEPTH, JSON_OBJECT_REGEX, schemaToRegex } from '../src/constraints/json_schema.ts';
import { ConstraintError } from '../src/constraints/automaton.ts';
import { compileRegexOffThread } from '../src/constraints/compile_thread.ts';
import { compileRegex } from '../src/constraints/regex.ts';
import { repoRoot } from '../src/gpu/paths.ts';
import { openTokenizer } from '../src/model/source.ts';
import { decode, type Tokenizer } from '../src/model/tokenizer/index.ts';
import { mulberry32 } from '../src/util/rng.ts';

// stories260K: vocab 512, SentencePiece with the dummy prefix; SmolLM2: vocab 49152, byte-level
// BPE, whose tokens may split a UTF-8 character. Both have a token for every ASCII character, so
// any ASCII text can be written: for ASCII-only patterns a token may follow a text exactly when
// the text it makes can still be completed to a match (character-level liveness).
let tok: Tokenizer;
let bpe: Tokenizer;
beforeAll(async () => {
  tok = await openTokenizer(join(repoRoot, 'models', 'stories260K', 'stories260K.gguf'));
  bpe = await openTokenizer(join(repoRoot, '..', 'shared', 'models', 'smollm2-135m-instruct'));
});

const ALPHABET = ['a', 'e', 'h', 't', ' '];
const fullMatch = (pattern: string) => new RegExp(`^(?:${pattern})$`);
const escapeText = (t: string) => t.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&');
const nfaOf = (source: string) => {
  const { expression, maxCharacter } = JS.Parser.fromLiteral({ source, flags: '' }).parse();
  return NFA.fromRegex(expression, { maxCharacter });
};

/** A random pattern over ALPHABET: literals, classes, concatenation, alternation, ?, *, +, {m,n}. */
function randomPattern(next: () => number, depth = 3): string {
  const pick = <T>(xs: T[]) => xs[Math.floor(next() * xs.length)];
  const r = next();
  if (depth === 0 || r < 0.3) {
    if (next() < 0.6) return escapeText(pick(ALPHABET));
    const set = ALPHABET.filter(() => next() < 0.5);
    return set.length ? `[${set.map(escapeText).join('')}]` : 'a';
  }
  const sub = () => randomPattern(next, depth - 1);
  if (r < 0.55) return `(?:${sub()}${sub()}${next() < 0.5 ? sub() : ''})`;
  if (r < 0.75) return `(?:${sub()}|${sub()})`;
  return `(?:${sub()})${pick(['?', '*', '+', '{0,2}', '{1,3}', '{2}'])}`;
}

/** The text of `ids` as the server writes it: the output starts a text (textStart) or follows token `previous`. */
const textOf = (ids: number[], previous?: number, t = tok) => decode(t, ids, previous);

/**
 * Walks `a` with random tokens; at every state checks that the allowed tokens are exactly those
 * whose text keeps the output completable to a match (refa: the pattern intersects `text.*`), and
 * that the state accepts exactly when the text matches (JavaScript's RegExp).
 */
function checkAgainstOracle(t: Tokenizer, a: TokenAutomaton, pattern: string, previous: number | undefined, next: () => number) {
  const re = fullMatch(pattern);
  const nfa = nfaOf(pattern);
  const canComplete = (text: string) => !isDisjointWith(nfa, nfaOf(`${escapeText(text)}[^]*`));
  const inAlphabet = (text: string) => [...text].every((c) => ALPHABET.includes(c));
  // a token whose own text leaves the alphabet leaves it in any context (ASCII is never made of
  // pieces of other characters), so only the others need the text they make
  const candidates = t.vocab.tokens.map((_, id) => id).filter((id) => t.tokenBytes(id).length > 0 && inAlphabet(new TextDecoder().decode(t.tokenBytes(id))));
  const ids: number[] = [];
  let state = 0;
  for (let step = 0; step < 8; step++) {
    const text = textOf(ids, previous, t);
    expect(a.accepting[state], `${pattern} after ${JSON.stringify(text)}`).toBe(re.test(text) ? 1 : 0);
    const expected = candidates.filter((id) => {
      const after = textOf([...ids, id], previous, t);
      return inAlphabet(after) && canComplete(after);
    });
    const allowed = allowedTokens(a, state);
    expect(allowed, `${pattern} after ${JSON.stringify(text)}`).toEqual(expected);
    if (allowed.length === 0) break;
    const id = allowed[Math.floor(next() * allowed.length)];
    ids.push(id);
    state = nextState(a, state, id);
  }
}

/** A random path from the start to an accepting state: random steps, then the shortest way home. */
function randomAcceptedPath(a: TokenAutomaton, next: () => number, randomSteps: number): number[] {
  const dist = tokensToAccept(a);
  const ids: number[] = [];
  let state = 0;
  for (let step = 0; ; step++) {
    if (a.accepting[state] && (step >= randomSteps || next() < 0.2)) return ids;
    const allowed = allowedTokens(a, state);
    if (allowed.length === 0) return ids; // accepting: every state left can reach one
    const closer = allowed.filter((id) => dist[nextState(a, state, id)] < dist[state]);
    const choices = step < randomSteps ? allowed : closer;
    const id = choices[Math.floor(next() * choices.length)];
    ids.push(id);
    state = nextState(a, state, id);
  }
}

/** Every state is reachable from the start and can reach an accepting state; no token without text. */
function checkShape(a: TokenAutomaton, t = tok) {
  checkAutomaton(a, t.vocab.tokens.length);
  expect([...tokensToAccept(a)].every((d) => d >= 0)).toBe(true);
  const seen = new Set([0]);
  for (const s of seen) for (const id of allowedTokens(a, s)) seen.add(nextState(a, s, id));
  expect(seen.size).toBe(a.states);
  for (let e = 0; e < a.pairs.length; e += 2) expect(t.tokenBytes(a.pairs[e]).length).toBeGreaterThan(0);
}

describe('compileRegex: token automata from regular expressions', () => {
  it('allows exactly the tokens that keep the text completable (random patterns, refa and RegExp as oracles)', () => {
    const next = mulberry32(12);
    const bos = tok.vocab.bos!;
    const previous = tok.encode('The', { addSpecial: false }).at(-1)!;
    for (let i = 0; i < 40; i++) {
      const pattern = randomPattern(next);
      const a = compileRegex(pattern, tok);
      checkShape(a);
      // the output starts a text (after BOS): the first token's leading space is dropped
      checkAgainstOracle(tok, a, pattern, bos, next);
      const after = compileRegex(pattern, tok, { textStart: false });
      checkShape(after);
      checkAgainstOracle(tok, after, pattern, previous, next);
    }
  });

  it('random accepted paths spell full matches', () => {
    const next = mulberry32(7);
    for (let i = 0; i < 60; i++) {
      const pattern = randomPattern(next, 4);
      const a = compileRegex(pattern, tok);
      for (let w = 0; w < 5; w++) {
        const text = textOf(randomAcceptedPath(a, next, 10));
        expect(fullMatch(pattern).test(text), `${pattern}: ${JSON.stringify(text)}`).toBe(true);
      }
    }
  });

  it('byte-level BPE: the same oracle, and tokens that split a UTF-8 character are never allowed', () => {
    const next = mulberry32(21);
    for (let i = 0; i < 6; i++) {
      const pattern = randomPattern(next);
      const a = compileRegex(pattern, bpe);
      checkShape(a, bpe);
      checkAgainstOracle(bpe, a, pattern, undefined, next);
    }
    const utf8 = new TextDecoder('utf-8', { fatal: true });
    const whole = bpe.vocab.tokens
      .map((_, id) => id)
      .filter((id) => {
        try {
          return utf8.decode(bpe.tokenBytes(id)).length > 0;
        } catch {
          return false;
        }
      });
    // some tokens with bytes are left out: the case is exercised
    expect(whole.length).toBeLessThan(bpe.vocab.tokens.filter((_, id) => bpe.tokenBytes(id).length > 0).length);
    expect(allowedTokens(compileRegex('[^]*', bpe), 0)).toEqual(whole);
  });

  it('keeps the start apart from a re-entered initial state (SentencePiece dummy prefix)', () => {
    const a = compileRegex('(?:in)*', tok);
    const spaced = tok.vocab.tokens.indexOf('\u2581in');
    const plain = tok.vocab.tokens.indexOf('in');
    expect(spaced).toBeGreaterThan(0);
    expect(plain).toBeGreaterThan(0);
    // the DFA's initial state is re-entered after "in": " in" writes "in" as the first token of a
    // text only, and " in" after it
    const afterFirst = nextState(a, 0, spaced);
    expect(afterFirst).toBeGreaterThan(0);
    expect(a.accepting[afterFirst]).toBe(1);
    expect(nextState(a, afterFirst, spaced)).toBe(-1);
    expect(nextState(a, afterFirst, plain)).toBeGreaterThan(0);
    // not at a text start, the space stays
    expect(nextState(compileRegex('(?:in)*', tok, { textStart: false }), 0, spaced)).toBe(-1);
  });

  it('drops tokens that lead where no token sequence can finish', () => {
    // after "b" the text can only go on with a character that stories260K writes in byte pieces
    const a = compileRegex('a|b\u4e2d', tok);
    checkShape(a);
    // ("" is a lone space, dropped at a text start)
    expect(new Set(allowedTokens(a, 0).map((id) => textOf([id])))).toEqual(new Set(['', 'a']));
  });

  it('caches per tokenizer, pattern and options', () => {
    const a = compileRegex('[ab]+c', tok);
    expect(compileRegex('[ab]+c', tok)).toBe(a);
    expect(compileRegex('[ab]+c', tok, { textStart: false })).not.toBe(a);
    expect(compileRegex('[ab]+c', tok, { flags: 'i' })).not.toBe(a);
  });

  it('compiles off the event loop on a worker thread: the same automaton, the same errors, one shared cache', async () => {
    const pattern = '(?:[a-z]+ ){1,3}[0-9]{2,4}';
    const offThread = await compileRegexOffThread(pattern, bpe, { textStart: false });
    const here = compileRegex(`(?:${pattern})`, bpe, { textStart: false }); // another key: compiled on this thread
    expect(offThread).not.toBe(here);
    expect(offThread).toEqual(here);
    expect(compileRegex(pattern, bpe, { textStart: false })).toBe(offThread);
    await expect(compileRegexOffThread('(a', bpe)).rejects.toThrow(ConstraintError);
    await expect(compileRegexOffThread('[0-9]{3}x', bpe)).resolves.toEqual(compileRegex('[0-9]{3}(?:x)', bpe));
  });

  it('honours flags i, s and u', () => {
    const ci = compileRegex('abc', tok, { flags: 'i' });
    const text = textOf(randomAcceptedPath(ci, mulberry32(3), 0));
    expect(text.toLowerCase()).toBe('abc');
    const newline = tok.vocab.tokens.indexOf('<0x0A>');
    expect(nextState(compileRegex('.', tok), 0, newline)).toBe(-1);
    expect(nextState(compileRegex('.', tok, { flags: 's' }), 0, newline)).toBeGreaterThan(0);
    const upper = compileRegex('\\p{Lu}', tok, { flags: 'u' });
    expect(textOf(randomAcceptedPath(upper, mulberry32(4), 0))).toMatch(/^\p{Lu}$/u);
  });

  it('rejects bad, unsupported and unsatisfiable patterns with a ConstraintError', () => {
    expect(() => compileRegex('(ab', tok)).toThrow(/invalid regex/);
    expect(() => compileRegex('^ab$', tok)).toThrow(/assertions .* are not supported/);
    expect(() => compileRegex('a(?=b)', tok)).toThrow(ConstraintError);
    expect(() => compileRegex('(a*)b\\1', tok)).toThrow(/backreferences are not supported/);
    expect(() => compileRegex('ab', tok, { flags: 'g' })).toThrow(/flags 'g'/);
    expect(() => compileRegex('a[]', tok)).toThrow(/matches no text/);
    // a character no token of this vocabulary writes on its own (only byte pieces of it exist)
    expect(() => compileRegex('\u4e2d', tok)).toThrow(/no sequence of tokens/);
    // the subset construction's node bound: this DFA needs 2^19 states
    expect(() => compileRegex('[ab]*a[ab]{18}', tok)).toThrow(/too complex/);
  });
});

// ---- JSON schemas -------------------------------------------------------------------------------

const NAMES = ['id', 'name', 'x y', 'q"t', 'b\\s'];

/** A random schema over the supported keywords, at most `depth` levels of objects and arrays. */
function randomSchema(next: () => number, depth: number): Record<string, unknown> {
  const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
  const pick = <T>(xs: T[]) => xs[Math.floor(next() * xs.length)];
  const kinds = ['string', 'integer', 'number', 'boolean', 'null', 'enum', 'const', 'anyOf', 'oneOf', 'nullable', ...(depth > 0 ? ['object', 'object', 'array', 'array'] : [])];
  switch (pick(kinds)) {
    case 'string': {
      // every pattern here matches a string of 2 or 3 characters, so any bounds around those hold
      const s: Record<string, unknown> = { type: 'string' };
      if (next() < 0.3) s.pattern = pick(['^[a-z]{1,4}$', '[0-9]+', 'ab|c.d', '.{2,3}', '^x\\$$']);
      if (next() < 0.3) s.minLength = int(0, s.pattern ? 2 : 3);
      if (next() < 0.3) s.maxLength = int(s.pattern ? 3 : ((s.minLength as number) ?? 0), 6);
      return s;
    }
    case 'integer': {
      const s: Record<string, unknown> = { type: 'integer' };
      if (next() < 0.5) s[pick(['minimum', 'exclusiveMinimum'])] = int(-300, 50);
      if (next() < 0.5) s[pick(['maximum', 'exclusiveMaximum'])] = int(60, 5000);
      return s;
    }
    case 'enum':
      return { enum: [pick(['a', 'q"', 'b\\']), int(-5, 5), null, true, [1, 'x'], { k: 'v' }].filter(() => next() < 0.6).concat(['z']) };
    case 'const':
      return { const: pick([{ a: [1, 2] }, 'he said "hi"', 3.5, false]) };
    case 'anyOf':
      return { anyOf: [randomSchema(next, depth - 1), randomSchema(next, depth - 1)] };
    case 'oneOf': // branches of different types, so at most one holds
      return { oneOf: [{ type: 'string', maxLength: 3 }, { type: 'integer' }, { type: 'array', items: { type: 'boolean' }, maxItems: 2 }].filter(() => next() < 0.7).concat([{ type: 'null' }]) };
    case 'nullable':
      return { type: [pick(['string', 'integer', 'boolean']), 'null'] };
    case 'object': {
      const names = NAMES.filter(() => next() < 0.5);
      return {
        ...(next() < 0.8 ? { type: 'object' } : {}), // without it, 'properties' implies it
        properties: Object.fromEntries(names.map((n) => [n, randomSchema(next, depth - 1)])),
        required: names.filter(() => next() < 0.5),
        ...(next() < 0.3 ? { additionalProperties: false } : {}),
      };
    }
    case 'array': {
      const s: Record<string, unknown> = { type: 'array', items: randomSchema(next, depth - 1) };
      if (next() < 0.4) s.minItems = int(0, 2);
      if (next() < 0.4) s.maxItems = int((s.minItems as number) ?? 0, 3);
      return s;
    }
    default:
      return { type: pick(['number', 'boolean', 'null']), title: 'annotations are ignored' };
  }
}

describe('JSON schemas', () => {
  const ajv = new Ajv({ strict: false });

  it('random accepted paths are JSON that validates (random schemas, both layouts)', () => {
    const next = mulberry32(99);
    for (let i = 0; i < 60; i++) {
      const schema = randomSchema(next, 2);
      const validate = ajv.compile(schema);
      for (const whitespace of ['none', 'single'] as const) {
        const a = compileJsonSchema(schema, tok, { whitespace });
        checkShape(a);
        for (let w = 0; w < 4; w++) {
          const text = textOf(randomAcceptedPath(a, next, 25));
          const value = JSON.parse(text);
          expect(validate(value), `${JSON.stringify(schema)}: ${text} ${ajv.errorsText(validate.errors)}`).toBe(true);
        }
      }
    }
  });

  it('random accepted paths validate over a byte-level BPE vocabulary too', () => {
    const next = mulberry32(31);
    for (let i = 0; i < 8; i++) {
      const schema = randomSchema(next, 2);
      const validate = ajv.compile(schema);
      const a = compileJsonSchema(schema, bpe);
      checkShape(a, bpe);
      for (let w = 0; w < 4; w++) {
        const text = textOf(randomAcceptedPath(a, next, 25), undefined, bpe);
        expect(validate(JSON.parse(text)), `${JSON.stringify(schema)}: ${text} ${ajv.errorsText(validate.errors)}`).toBe(true);
      }
    }
  });

  it('generic JSON objects parse and nest at most JSON_DEPTH deep', () => {
    const a = compileRegex(JSON_OBJECT_REGEX, tok);
    const depthOf = (v: unknown): number => (typeof v === 'object' && v !== null ? 1 + Math.max(0, ...Object.values(v).map(depthOf)) : 0);
    const next = mulberry32(5);
    for (let w = 0; w < 30; w++) {
      const value = JSON.parse(textOf(randomAcceptedPath(a, next, 40)));
      expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);
      expect(depthOf(value)).toBeLessThanOrEqual(JSON_DEPTH);
    }
    // and the bound is reached: the deepest nesting is a valid text
    const deepest = `{"a":${'['.repeat(JSON_DEPTH - 1)}${']'.repeat(JSON_DEPTH - 1)}}`;
    expect(fullMatch(JSON_OBJECT_REGEX).test(deepest)).toBe(true);
    expect(fullMatch(JSON_OBJECT_REGEX).test(`{"a":${'['.repeat(JSON_DEPTH)}${']'.repeat(JSON_DEPTH)}}`)).toBe(false);
  });

  it('integer bounds are exact', () => {
    const next = mulberry32(17);
    const random = Array.from({ length: 12 }, () => {
      const [a, b] = [Math.floor(next() * 8000) - 2500, Math.floor(next() * 8000) - 2500].sort((x, y) => x - y);
      return { minimum: a, maximum: b };
    });
    const bounds = [{ minimum: -123, maximum: 4567 }, { minimum: 7, maximum: 7 }, { exclusiveMinimum: -10.5, maximum: 0 }, { minimum: 90, exclusiveMaximum: 1201 }, { minimum: -1999 }, { maximum: -5 }, { minimum: 15, maximum: 35 }, ...random];
    for (const b of bounds) {
      const schema = { type: 'integer', ...b };
      const re = fullMatch(schemaToRegex(schema));
      const validate = ajv.compile(schema);
      for (let x = -2500; x <= 5000; x++) expect(re.test(String(x)), `${JSON.stringify(b)}: ${x}`).toBe(validate(x));
      expect(re.test('-0')).toBe(false);
      expect(re.test('00')).toBe(false);
    }
  });

  it('objects: optional properties may be left out, in schema order', () => {
    const schema = { type: 'object', properties: { a: { type: 'null' }, b: { type: 'null' }, c: { type: 'null' } }, required: ['b'] };
    const re = fullMatch(schemaToRegex(schema));
    const texts = ['a', 'b', 'c', 'ab', 'ac', 'bc', 'abc', 'ba', 'cb', ''].map((keys) => `{${[...keys].map((k) => `"${k}":null`).join(',')}}`);
    expect(texts.filter((t) => re.test(t))).toEqual(['{"b":null}', '{"a":null,"b":null}', '{"b":null,"c":null}', '{"a":null,"b":null,"c":null}']);
  });

  it('string patterns exclude what would need an escape, and lengths count characters', () => {
    const re = fullMatch(schemaToRegex({ type: 'string', pattern: '.{1,2}' }));
    expect(re.test('"ab"')).toBe(true);
    expect(re.test('"a""')).toBe(false);
    expect(re.test('"\\"')).toBe(false);
    const len = fullMatch(schemaToRegex({ type: 'string', minLength: 2, maxLength: 2 }));
    // one emoji is one character to JSON schema, two UTF-16 units: left out, raw or escaped
    expect(['"ab"', '"\\n\\u00e9"', '"a"', '"abc"', '"\ud83d\ude00"', '"\\ud83d\\ude00"'].map((t) => len.test(t))).toEqual([true, true, false, false, false, false]);
  });

  it('rejects unsupported keywords by name, and unsatisfiable schemas', () => {
    const bad: [unknown, RegExp][] = [
      [{ type: 'object', patternProperties: {} }, /keyword 'patternProperties' at # is not supported/],
      [{ $ref: '#/definitions/a' }, /keyword '\$ref' at # is not supported/],
      [{ type: 'object', properties: { a: { type: 'string', format: 'email' } } }, /keyword 'format' at #\/properties\/a is not supported/],
      [{ type: 'number', minimum: 0 }, /keyword 'minimum' at # needs type 'integer'/],
      [{ type: 'object', additionalProperties: true }, /'additionalProperties' at # must be false/],
      [{ type: 'object', properties: {}, required: ['a'] }, /requires 'a'/],
      [{ type: 'integer', minimum: 5, maximum: 4 }, /no integer lies within/],
      [{ type: 'string', pattern: '^a\\b' }, /assertions/],
      [{ type: 'string', pattern: '"' }, /matches no string/],
      [{ type: 'date' }, /type "date" at # is not supported/],
      [false, /no value is valid/],
    ];
    for (const [schema, message] of bad) {
      expect(() => compileJsonSchema(schema, tok), JSON.stringify(schema)).toThrow(ConstraintError);
      expect(() => compileJsonSchema(schema, tok), JSON.stringify(schema)).toThrow(message);
    }
  });
});
