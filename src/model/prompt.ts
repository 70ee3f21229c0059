import type { ChatMessage, ChatTemplate } from './chat_template.ts';
import type { Tokenizer } from './tokenizer/index.ts';
import { partitionSpecial } from './tokenizer/vocab.ts';

/**
 * Prompt text to ids the way llama.cpp's server and vLLM do: control-token text ("<s>",
 * "<|im_start|>") becomes its id, and BOS is added unless the text already starts with it.
 */
export function encodePromptText(tokenizer: Tokenizer, text: string, options: { addSpecial?: boolean } = {}): number[] {
  const { bos, tokens } = tokenizer.vocab;
  const startsWithBos = bos !== null && tokens[bos] !== '' && text.startsWith(tokens[bos]);
  return tokenizer.encode(text, { addSpecial: (options.addSpecial ?? true) && !startsWithBos, parseSpecial: true });
}

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
 * contents are tokenized separately (token boundaries there may differ from one pass).
 */
export function encodeChatPrompt(tokenizer: Tokenizer, template: ChatTemplate, messages: ChatMessage[]): number[] {
  const rendered = template.render(messages);
  if (!messages.some((m) => hasControlText(tokenizer, m.content))) return encodePromptText(tokenizer, rendered);
  // Find the contents in the rendered text by rendering them between markers; templates that trim
  // contents (Llama 3's `| trim`) are matched by marking the trimmed content.
  for (const trim of [false, true]) {
    const marked = template.render(messages.map((m) => ({ ...m, content: OPEN + (trim ? m.content.trim() : m.content) + CLOSE })));
    if (marked.replaceAll(OPEN, '').replaceAll(CLOSE, '') !== rendered) continue;
    const { bos, addBos, tokens } = tokenizer.vocab;
    const ids = bos !== null && addBos && !rendered.startsWith(tokens[bos]) ? [bos] : [];
    for (const [i, part] of marked.split(OPEN).entries()) {
      const [content, templateText] = i === 0 ? ['', part] : part.split(CLOSE);
      ids.push(...tokenizer.encode(content, { addSpecial: false, parseSpecial: false }));
      ids.push(...tokenizer.encode(templateText, { addSpecial: false, parseSpecial: true }));
    }
    return ids;
  }
  throw new Error('the chat template changes message contents in a way that hides where they are, so control-token text in them cannot be kept as plain text');
}
