import type { Tokenizer } from '../model/tokenizer/index.ts';
import type { TokenAutomaton } from './automaton.ts';
import { compileRegexOffThread } from './compile_thread.ts';
import { JSON_OBJECT_REGEX, schemaToRegex } from './json_schema.ts';
import { compileRegex, escapeRegex } from './regex.ts';

/**
 * What a request asks its output to be (the server's structured-output fields, src/server/openai.ts):
 * one of a list of strings, a full match of a regex, JSON valid against a schema, or any JSON
 * object (nested at most JSON_DEPTH deep).
 */
export type GuideSpec = { kind: 'choice'; choices: readonly string[] } | { kind: 'regex'; pattern: string } | { kind: 'json_schema'; schema: unknown } | { kind: 'json_object' };

/**
 * Every guide is a regex. A list of strings is the alternation of the strings as literals: the
 * output text equals one of them exactly, whichever tokenization the model picks. Throws
 * ConstraintError on a schema it cannot express.
 */
function guideRegex(guide: GuideSpec): string {
  switch (guide.kind) {
    case 'choice':
      return guide.choices.map(escapeRegex).join('|');
    case 'regex':
      return guide.pattern;
    case 'json_schema':
      return schemaToRegex(guide.schema);
    case 'json_object':
      return JSON_OBJECT_REGEX;
  }
}

/**
 * The token automaton of a guide over `tokenizer` (compiled automata are cached per tokenizer).
 * `textStart`: the output starts a text (the prompt is empty or ends with BOS), where a
 * SentencePiece detokenizer drops the first token's leading space. Throws ConstraintError on a bad guide.
 */
export const compileGuide = (guide: GuideSpec, tokenizer: Tokenizer, textStart: boolean): TokenAutomaton => compileRegex(guideRegex(guide), tokenizer, { textStart });

/** compileGuide on a worker thread (the server: other streams go on meanwhile); cache hits stay here. */
export const compileGuideOffThread = async (guide: GuideSpec, tokenizer: Tokenizer, textStart: boolean): Promise<TokenAutomaton> => compileRegexOffThread(guideRegex(guide), tokenizer, { textStart });
