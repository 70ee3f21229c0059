/**
 * Tokenizing a request's prompt without letting a huge one stall the server: a prompt whose byte
 * length alone proves it cannot fit is refused before any tokenization, a long one is tokenized in
 * slices with the event loop handed back between them (other requests' tokens keep flowing), and
 * tokenization stops as soon as the ids pass what one sequence can hold.
 */
import { collectSlices, collectSlicesUnblocking, type PromptSlices } from '../model/prompt.ts';
import { SLICE_CHARS, type Tokenizer } from '../model/tokenizer/index.ts';
import { ApiError } from './openai.ts';

export interface PromptBudget {
  /** the model's context length */
  contextLength: number;
  /** the most tokens one sequence can hold: the context, or what the KV cache holds if less */
  maxSequence: number;
  /** tokens the request needs besides its prompt (max_tokens, or 1 to generate anything) */
  reserve: number;
  /** how the error names the reserve, e.g. "max_tokens (16)" */
  reserveName: string;
  /** the parameter the error points at */
  param: string;
}

/**
 * The prompt's ids, or a 400 context_length_exceeded once they cannot fit in `maxSequence` with
 * `reserve` more tokens. `onPause` is told of each hand-back of the event loop.
 */
export async function tokenizePrompt(tokenizer: Tokenizer, prompt: PromptSlices, budget: PromptBudget, onPause?: () => void): Promise<number[]> {
  const limit = budget.maxSequence - budget.reserve;
  const tooLong = (count: string) => {
    const kv = budget.maxSequence < budget.contextLength ? ', less in this KV cache' : '';
    return new ApiError(400, `The prompt is too long: it has ${count}; with ${budget.reserveName} that is more than the ${budget.maxSequence} tokens one sequence can hold (context length ${budget.contextLength}${kv}).`, 'invalid_request_error', budget.param, 'context_length_exceeded');
  };
  const atLeast = tokenizer.minTokens?.(prompt.text) ?? 0;
  if (atLeast > limit) throw tooLong(`at least ${atLeast} tokens (judged from its ${Buffer.byteLength(prompt.text)} bytes, before tokenizing)`);
  // a prompt of one slice is tokenized at once; handing the loop back would only delay it
  const ids = prompt.text.length <= SLICE_CHARS ? collectSlices(prompt.slices) : await collectSlicesUnblocking(prompt.slices, limit, onPause);
  if (ids === null) throw tooLong(`more than ${Math.max(0, limit)} tokens (tokenization stopped there)`);
  if (ids.length > limit) throw tooLong(`${ids.length} tokens`);
  return ids;
}
