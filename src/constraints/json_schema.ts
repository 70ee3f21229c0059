/**
 * JSON schemas to regular expressions, then token automata (issue 12; Outlines' approach,
 * REFERENCE.md section 3). Every text the regex matches is JSON that validates against the schema;
 * the regex covers a useful subset of the valid texts, not all of them:
 * - layout: compact JSON (`{"a":1,"b":[2,3]}`), or with `whitespace: 'single'` an optional single
 *   space after each `:` and `,`; never unbounded whitespace, so a model cannot pad forever.
 * - object: `properties` in schema order, the `required` ones always, the others optional;
 *   no other properties (`additionalProperties` absent or false).
 * - string: any JSON string (escapes included), or `enum`/`const`, or `pattern` (matched against
 *   the whole string as if anchored, leading ^ and trailing $ allowed, other assertions not;
 *   restricted to strings that need no escapes); `minLength`/`maxLength` count characters outside
 *   the surrogate range (UTF-16 units and code points agree there). `format` is not supported.
 * - integer: canonical decimal; `minimum`/`maximum`/`exclusiveMinimum`/`exclusiveMaximum` (numbers,
 *   draft 6+) become an exact digit-range regex; without bounds at most 16 digits.
 * - number: an integer part of at most 16 digits, an optional fraction of 1-16 digits, an optional
 *   exponent of 1-2 digits; bounds are not supported on numbers.
 * - boolean, null; `type` may be a list (alternation).
 * - array: `items` (absent: any value), `minItems`, `maxItems`.
 * - without `type`, the keywords of objects, arrays or strings imply it (`properties` alone: object).
 * - `enum`/`const` at any type: the values' compact JSON, taken as given; `anyOf`/`oneOf`:
 *   alternation (oneOf's branches are assumed disjoint); `{}` or `true`: any JSON value nested at
 *   most JSON_DEPTH deep (numbers of any length, members and items unbounded in number).
 * - annotations (title, description, default, examples, $schema, $id, $comment) are ignored; any
 *   other keyword, `$ref` included, is a ConstraintError naming it.
 * Strings without maxLength and arrays without maxItems are unbounded: the request's max_tokens
 * ends such an output (unbounded repeats cost no automaton states; bounds multiply them).
 */
import { JS, NFA } from 'refa';
import type { Tokenizer } from '../model/tokenizer/index.ts';
import { ConstraintError, type TokenAutomaton } from './automaton.ts';
import { compileRegex, escapeRegex, parseRegex } from './regex.ts';

export interface JsonSchemaOptions {
  /** 'none': compact JSON (default); 'single': an optional space after each ':' and ',' */
  whitespace?: 'none' | 'single';
  /** see RegexOptions.textStart */
  textStart?: boolean;
}

/** Nesting depth of objects and arrays in a generic JSON value ({"type":"json_object"}, `{}`). */
export const JSON_DEPTH = 4;
/** Digits of an integer (and of a number's integer part) without bounds: stays within 2^53. */
export const MAX_INT_DIGITS = 16;

const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment']);
const KEYWORDS: Record<string, readonly string[]> = {
  object: ['properties', 'required', 'additionalProperties'],
  string: ['minLength', 'maxLength', 'pattern'],
  integer: ['minimum', 'maximum', 'exclusiveMinimum', 'exclusiveMaximum'],
  number: [],
  boolean: [],
  null: [],
  array: ['items', 'minItems', 'maxItems'],
};
const GENERAL = ['type', 'enum', 'const', 'anyOf', 'oneOf'];

const STRING_CHAR = String.raw`(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})`;
// one character outside the surrogates, raw or escaped: a count of these is a count of code points
const COUNTED_CHAR = String.raw`(?:[^"\\\x00-\x1f\ud800-\udfff]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-Ce-fE-F][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}))`;
const STRING = `"${STRING_CHAR}*"`;
const INTEGER = `-?(?:0|[1-9][0-9]{0,${MAX_INT_DIGITS - 1}})`;
const NUMBER = `${INTEGER}(?:\\.[0-9]{1,16})?(?:[eE][+-]?[0-9]{1,2})?`;
// any JSON number: unbounded digits take fewer automaton states than bounded ones
const ANY_NUMBER = String.raw`-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?`;

/** A generic JSON value nested at most `depth` deep (objects' members and arrays' items unbounded in number). */
export function jsonValueRegex(depth = JSON_DEPTH, whitespace: 'none' | 'single' = 'none'): string {
  const ws = whitespace === 'single' ? ' ?' : '';
  let value = `(?:${STRING}|${ANY_NUMBER}|true|false|null)`;
  for (let d = 0; d < depth; d++) {
    const member = `${STRING}:${ws}${value}`;
    value = `(?:${value}|\\{(?:${member}(?:,${ws}${member})*)?\\}|\\[(?:${value}(?:,${ws}${value})*)?\\])`;
  }
  return value;
}

/** The regex of {"type":"json_object"}: a JSON object nested at most JSON_DEPTH deep. */
export const JSON_OBJECT_REGEX = (() => {
  const value = jsonValueRegex(JSON_DEPTH - 1);
  const member = `${STRING}:${value}`;
  return `\\{(?:${member}(?:,${member})*)?\\}`;
})();

/** A regex whose matches are JSON texts valid against `schema`. */
export function schemaToRegex(schema: unknown, opts: Pick<JsonSchemaOptions, 'whitespace'> = {}): string {
  return new SchemaRegex(opts.whitespace ?? 'none').of(schema, '#');
}

/** The token automaton of `schema` over `tokenizer`'s vocabulary (cached by its regex). */
export function compileJsonSchema(schema: unknown, tokenizer: Tokenizer, opts: JsonSchemaOptions = {}): TokenAutomaton {
  return compileRegex(schemaToRegex(schema, opts), tokenizer, { textStart: opts.textStart });
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const alternation = (parts: string[]) => (parts.length === 1 ? parts[0] : `(?:${parts.join('|')})`);

/** Without 'type', the object, array or string keywords a schema uses imply that type. */
function impliedType(schema: Record<string, unknown>): string[] | undefined {
  const implied = ['object', 'array', 'string'].filter((t) => KEYWORDS[t].some((k) => k in schema));
  return implied.length === 1 ? implied : undefined;
}

class SchemaRegex {
  private readonly ws: string;
  constructor(private readonly whitespace: 'none' | 'single') {
    this.ws = whitespace === 'single' ? ' ?' : '';
  }

  of(schema: unknown, at: string): string {
    if (schema === true) return jsonValueRegex(JSON_DEPTH, this.whitespace);
    if (schema === false) throw new ConstraintError(`JSON schema at ${at} is false: no value is valid`);
    if (!isObject(schema)) throw new ConstraintError(`JSON schema at ${at} is not an object`);
    const types = schema.type === undefined ? impliedType(schema) : Array.isArray(schema.type) ? (schema.type as unknown[]) : [schema.type];
    if (types?.length === 0) throw new ConstraintError(`JSON schema 'type' at ${at} is an empty list`);
    for (const t of types ?? []) if (typeof t !== 'string' || !(t in KEYWORDS)) throw new ConstraintError(`JSON schema type ${JSON.stringify(t)} at ${at} is not supported`);
    const allowed = new Set([...GENERAL, ...ANNOTATIONS, ...(types ?? []).flatMap((t) => KEYWORDS[t as string])]);
    for (const k of Object.keys(schema)) {
      if (allowed.has(k)) continue;
      const owner = Object.keys(KEYWORDS).find((t) => KEYWORDS[t].includes(k));
      if (owner) throw new ConstraintError(`JSON schema keyword '${k}' at ${at} needs type '${owner}'${owner === 'integer' ? ' (bounds are supported on integers only)' : ''}`);
      throw new ConstraintError(`JSON schema keyword '${k}' at ${at} is not supported`);
    }
    if ('const' in schema) return escapeRegex(JSON.stringify(schema.const));
    if ('enum' in schema) {
      if (!Array.isArray(schema.enum) || schema.enum.length === 0) throw new ConstraintError(`JSON schema 'enum' at ${at} must be a non-empty array`);
      return alternation(schema.enum.map((v) => escapeRegex(JSON.stringify(v))));
    }
    for (const k of ['anyOf', 'oneOf'] as const) {
      if (!(k in schema)) continue;
      const branches = schema[k];
      if (!Array.isArray(branches) || branches.length === 0) throw new ConstraintError(`JSON schema '${k}' at ${at} must be a non-empty array`);
      if (types) throw new ConstraintError(`JSON schema '${k}' at ${at} together with 'type' is not supported`);
      return alternation(branches.map((b, i) => this.of(b, `${at}/${k}/${i}`)));
    }
    if (!types) return jsonValueRegex(JSON_DEPTH, this.whitespace);
    return alternation(types.map((t) => this.typed(t as string, schema, at)));
  }

  private typed(type: string, s: Record<string, unknown>, at: string): string {
    switch (type) {
      case 'object':
        return this.object(s, at);
      case 'array':
        return this.array(s, at);
      case 'string':
        return stringRegex(s, at);
      case 'integer':
        return integerRegex(s, at);
      case 'number':
        return NUMBER;
      case 'boolean':
        return '(?:true|false)';
      default:
        return 'null';
    }
  }

  private object(s: Record<string, unknown>, at: string): string {
    if (s.additionalProperties !== undefined && s.additionalProperties !== false) throw new ConstraintError(`JSON schema 'additionalProperties' at ${at} must be false (or absent)`);
    const props = s.properties ?? {};
    if (!isObject(props)) throw new ConstraintError(`JSON schema 'properties' at ${at} must be an object`);
    const required = s.required ?? [];
    if (!Array.isArray(required) || required.some((r) => typeof r !== 'string')) throw new ConstraintError(`JSON schema 'required' at ${at} must be an array of names`);
    for (const r of required) if (!(r in props)) throw new ConstraintError(`JSON schema at ${at} requires '${r}', which is not among its properties`);
    const members = Object.entries(props).map(([name, sub]) => ({
      text: `${escapeRegex(JSON.stringify(name))}:${this.ws}${this.of(sub, `${at}/properties/${name}`)}`,
      required: required.includes(name),
    }));
    // the members after one already written, each behind a comma
    const rest = (from: number) => members.slice(from).map((m) => (m.required ? `,${this.ws}${m.text}` : `(?:,${this.ws}${m.text})?`)).join('');
    // the first member written is any one up to the first required one
    const firsts: string[] = [];
    for (let k = 0; k < members.length; k++) {
      firsts.push(members[k].text + rest(k + 1));
      if (members[k].required) break;
    }
    const body = firsts.length === 0 ? '' : members.some((m) => m.required) ? alternation(firsts) : `(?:${firsts.join('|')})?`;
    return `\\{${body}\\}`;
  }

  private array(s: Record<string, unknown>, at: string): string {
    const item = this.of(s.items ?? true, `${at}/items`);
    const min = count(s, 'minItems', at) ?? 0;
    const max = count(s, 'maxItems', at);
    if (max !== undefined && max < min) throw new ConstraintError(`JSON schema at ${at}: maxItems < minItems`);
    if (max === 0) return '\\[\\]';
    const more = `(?:,${this.ws}${item})${repeat(Math.max(min - 1, 0), max === undefined ? undefined : max - 1)}`;
    return min === 0 ? `\\[(?:${item}${more})?\\]` : `\\[${item}${more}\\]`;
  }
}

function count(s: Record<string, unknown>, key: string, at: string): number | undefined {
  const v = s[key];
  if (v === undefined) return undefined;
  if (!Number.isSafeInteger(v) || (v as number) < 0) throw new ConstraintError(`JSON schema '${key}' at ${at} must be a non-negative integer`);
  return v as number;
}

const repeat = (min: number, max: number | undefined) => (max === undefined ? `{${min},}` : `{${min},${max}}`);

function stringRegex(s: Record<string, unknown>, at: string): string {
  const min = count(s, 'minLength', at) ?? 0;
  const max = count(s, 'maxLength', at);
  if (max !== undefined && max < min) throw new ConstraintError(`JSON schema at ${at}: maxLength < minLength`);
  const counted = min > 0 || max !== undefined;
  if (s.pattern === undefined) return counted ? `"${COUNTED_CHAR}${repeat(min, max)}"` : STRING;
  if (typeof s.pattern !== 'string') throw new ConstraintError(`JSON schema 'pattern' at ${at} must be a string`);
  return `"${patternRegex(s.pattern, counted ? { min, max } : undefined, at)}"`;
}

/**
 * `pattern` (whole-string match) as a regex over a JSON string's contents: intersected with the
 * characters that need no escape (and, with a length bound, with that length), so the text is the
 * string itself. refa intersects the automata and writes the result back as a regex.
 */
function patternRegex(pattern: string, length: { min: number; max: number | undefined } | undefined, at: string): string {
  const body = pattern.replace(/^\^/, '').replace(/(?<!\\)((?:\\\\)*)\$$/, '$1');
  let parsed;
  try {
    parsed = parseRegex(body);
  } catch (e) {
    throw new ConstraintError(`JSON schema 'pattern' at ${at}: ${(e as Error).message}`);
  }
  const plain = String.raw`[^"\\\x00-\x1f${length ? String.raw`\ud800-\udfff` : ''}]${length ? repeat(length.min, length.max) : '*'}`;
  const options = { maxCharacter: parsed.maxCharacter };
  const both = NFA.fromIntersection(NFA.fromRegex(parsed.expression, options), NFA.fromRegex(parseRegex(plain).expression, options));
  if (both.isEmpty) throw new ConstraintError(`JSON schema 'pattern' at ${at} matches no string that fits the schema`);
  return `(?:${JS.toLiteral(both.toRegex(), { flags: NO_FLAGS }).source})`;
}

// the literal is spliced into a regex without flags
const NO_FLAGS = { dotAll: false, global: false, ignoreCase: false, multiline: false, sticky: false, unicode: false, unicodeSets: false } as const;

/** Integers in [lo, hi] (either unbounded) as a canonical-decimal regex. */
function integerRegex(s: Record<string, unknown>, at: string): string {
  const bound = (key: string) => {
    const v = s[key];
    if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v))) throw new ConstraintError(`JSON schema '${key}' at ${at} must be a number`);
    return v as number | undefined;
  };
  const limit = 10 ** MAX_INT_DIGITS - 1;
  const [min, xmin, max, xmax] = ['minimum', 'exclusiveMinimum', 'maximum', 'exclusiveMaximum'].map(bound);
  const lows = [min === undefined ? -limit : Math.ceil(min), xmin === undefined ? -limit : Math.floor(xmin) + 1];
  const highs = [max === undefined ? limit : Math.floor(max), xmax === undefined ? limit : Math.ceil(xmax) - 1];
  const lo = Math.max(-limit, ...lows);
  const hi = Math.min(limit, ...highs);
  if (lo === -limit && hi === limit) return INTEGER;
  if (lo > hi) throw new ConstraintError(`JSON schema at ${at}: no integer lies within its bounds`);
  const parts: string[] = [];
  if (lo < 0) parts.push(`-${naturalRange(Math.max(1, -hi), -lo)}`);
  if (hi >= 0) parts.push(naturalRange(Math.max(0, lo), hi));
  return alternation(parts);
}

/** Decimal integers in [a, b] (0 <= a <= b), without leading zeros. */
function naturalRange(a: number, b: number): string {
  const parts: string[] = [];
  // split into runs of equal digit counts
  for (let digits = String(a).length; digits <= String(b).length; digits++) {
    const from = Math.max(a, digits === 1 ? 0 : 10 ** (digits - 1));
    const to = Math.min(b, 10 ** digits - 1);
    if (from <= to) parts.push(sameLength(String(from), String(to)));
  }
  return alternation(parts);
}

/** Digit strings of one length in [x, y] (as strings, x <= y). */
function sameLength(x: string, y: string): string {
  if (x.length === 0) return '';
  if (x === y) return x;
  const rest = x.length - 1;
  if (x[0] === y[0]) return x[0] + sameLength(x.slice(1), y.slice(1));
  const digit = (lo: number, hi: number) => (lo === hi ? String(lo) : `[${lo}-${hi}]`);
  const anyRest = rest === 0 ? '' : rest === 1 ? '[0-9]' : `[0-9]{${rest}}`;
  const x0 = Number(x[0]);
  const y0 = Number(y[0]);
  const parts: string[] = [];
  const xFull = /^0*$/.test(x.slice(1));
  const yFull = /^9*$/.test(y.slice(1));
  const lo = xFull ? x0 : x0 + 1;
  const hi = yFull ? y0 : y0 - 1;
  if (!xFull) parts.push(x[0] + sameLength(x.slice(1), '9'.repeat(rest)));
  if (lo <= hi) parts.push(digit(lo, hi) + anyRest);
  if (!yFull) parts.push(y[0] + sameLength('0'.repeat(rest), y.slice(1)));
  return alternation(parts);
}
