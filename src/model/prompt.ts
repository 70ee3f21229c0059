import type { ChatMessage, ChatTemplate, TemplateTool } from './chat_template.ts';
import { encodeSlices, type Tokenizer } from './tokenizer/index.ts';
import { partitionSpecial } from './tokenizer/vocab.ts';

/**
 * A prompt about to be tokenized: the whole text its ids stand for (the rendered chat), whose
 * UTF-8 size bounds their count from below (Tokenizer.maxInputBytesPerToken), and its ids in
 * slices of bounded work (Tokenizer.encodeSlices), computed as they are iterated.
 */
export interface PromptSlices {
  text: string;
  slices: Iterable<number[]>;
}

/** All of a prompt's ids at once. */
export function collectSlices(slices: Iterable<number[]>): number[] {
  const ids: number[] = [];
  for (const slice of slices) for (const id of slice) ids.push(id);
  return ids;
}

/**
 * A prompt's ids, handing the event loop back (setImmediate) before each slice after the first
 * (and before finding that there is none left), so that other requests' tokens keep flowing while
 * a long prompt is tokenized; null as soon as there are more than `limit` ids (the rest of the
 * text is never tokenized). `onPause` is told of each hand-back.
 */
export async function collectSlicesUnblocking(slices: Iterable<number[]>, limit = Infinity, onPause?: () => void): Promise<number[] | null> {
  const ids: number[] = [];
  let first = true;
  const it = slices[Symbol.iterator]();
  try {
    for (;;) {
      if (!first) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        onPause?.();
      }
      first = false;
      const next = it.next();
      if (next.done) return ids;
      for (const id of next.value) ids.push(id);
      if (ids.length > limit) return null;
    }
  } finally {
    it.return?.();
  }
}

/**
 * Prompt text to ids the way llama.cpp's server and vLLM do: control-token text ("<s>",
 * "<|im_start|>") becomes its id, and BOS is added unless the text already starts with it.
 */
export function promptTextSlices(tokenizer: Tokenizer, text: string, options: { addSpecial?: boolean } = {}): PromptSlices {
  const { bos, tokens } = tokenizer.vocab;
  const startsWithBos = bos !== null && tokens[bos] !== '' && text.startsWith(tokens[bos]);
  return { text, slices: encodeSlices(tokenizer, text, { addSpecial: (options.addSpecial ?? true) && !startsWithBos, parseSpecial: true }) };
}

/** promptTextSlices' ids at once. */
export const encodePromptText = (tokenizer: Tokenizer, text: string, options: { addSpecial?: boolean } = {}): number[] =>
  collectSlices(promptTextSlices(tokenizer, text, options).slices);

// Private-use code points that mark where a message's content sits in the rendered template.
const OPEN = '\uE000';
const CLOSE = '\uE001';

/** Whether control-token text in `text` would be parsed as a control token. */
const hasControlText = (tokenizer: Tokenizer, text: string): boolean =>
  partitionSpecial(text, tokenizer.vocab, true).length !== partitionSpecial(text, tokenizer.vocab, false).length;

/**
 * A chat prompt's ids: the template's own special tokens become ids, but control-token text inside a
 * message's content stays plain text, so a user cannot open or close turns. Contents without such
 * text give exactly the ids of the whole rendered prompt; with it, the template's parts and the
 * contents are tokenized separately (token boundaries there may differ from one pass). Tool
 * definitions and an assistant's tool calls are rendered by the template as its own text, so
 * control-token text in them is refused. The template renders at once (it may throw); the rest
 * happens as the slices are iterated.
 */
export function chatPromptSlices(tokenizer: Tokenizer, template: ChatTemplate, messages: ChatMessage[], tools: readonly TemplateTool[] = []): PromptSlices {
  const structured = JSON.stringify([tools, messages.map((m) => [m.tool_calls, m.name, m.tool_call_id])]);
  if (hasControlText(tokenizer, structured)) throw new Error('control-token text is not allowed in tools, tool calls, names or tool_call_ids (only message contents keep it as plain text)');
  const rendered = template.render(messages, { tools });
  return { text: rendered, slices: chatSlices(tokenizer, (ms) => template.render(ms, { tools }), messages, rendered) };
}

function* chatSlices(tokenizer: Tokenizer, render: (messages: ChatMessage[]) => string, messages: ChatMessage[], rendered: string): Generator<number[], void, undefined> {
  if (!messages.some((m) => hasControlText(tokenizer, m.content))) {
    yield* promptTextSlices(tokenizer, rendered).slices;
    return;
  }
  // Find the contents in the rendered text by rendering them between markers; templates that trim
  // contents (Llama 3's `| trim`) are matched by marking the trimmed content.
  for (const trim of [false, true]) {
    const marked = render(messages.map((m) => ({ ...m, content: OPEN + (trim ? m.content.trim() : m.content) + CLOSE })));
    if (marked.replaceAll(OPEN, '').replaceAll(CLOSE, '') !== rendered) continue;
    const { bos, addBos, tokens } = tokenizer.vocab;
    if (bos !== null && addBos && !rendered.startsWith(tokens[bos])) yield [bos];
    for (const [i, part] of marked.split(OPEN).entries()) {
      const [content, templateText] = i === 0 ? ['', part] : part.split(CLOSE);
      yield* encodeSlices(tokenizer, content, { addSpecial: false, parseSpecial: false });
      yield* encodeSlices(tokenizer, templateText, { addSpecial: false, parseSpecial: true });
    }
    return;
  }
  throw new Error('the chat template changes message contents in a way that hides where they are, so control-token text in them cannot be kept as plain text');
}
