import type { Tokenizer } from '../model/tokenizer/index.ts';
import type { TokenAutomaton } from './automaton.ts';
import { compileJsonSchema, JSON_OBJECT_REGEX } from './json_schema.ts';
import { compileRegex, escapeRegex } from './regex.ts';

/**
 * What a request asks its output to be (the server's structured-output fields, src/server/openai.ts):
 * one of a list of strings, a full match of a regex, JSON valid against a schema, or any JSON
 * object (nested at most JSON_DEPTH deep).
 */
export type GuideSpec = { kind: 'choice'; choices: readonly string[] } | { kind: 'regex'; pattern: string } | { kind: 'json_schema'; schema: unknown } | { kind: 'json_object' };

/**
 * The token automaton of a guide over `tokenizer` (compiled automata are cached per tokenizer).
 * `textStart`: the output starts a text (the prompt is empty or ends with BOS), where a
 * SentencePiece detokenizer drops the first token's leading space. A list of strings is the
 * alternation of the strings as literals: the output text equals one of them exactly, whichever
 * tokenization the model picks. Throws ConstraintError on a bad guide.
 */
export function compileGuide(guide: GuideSpec, tokenizer: Tokenizer, textStart: boolean): TokenAutomaton {
  switch (guide.kind) {
    case 'choice':
      return compileRegex(guide.choices.map(escapeRegex).join('|'), tokenizer, { textStart });
    case 'regex':
      return compileRegex(guide.pattern, tokenizer, { textStart });
    case 'json_schema':
      return compileJsonSchema(guide.schema, tokenizer, { textStart });
    case 'json_object':
      return compileRegex(JSON_OBJECT_REGEX, tokenizer, { textStart });
  }
}
