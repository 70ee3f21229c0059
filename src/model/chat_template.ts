import { Template } from '@huggingface/jinja';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
}

/**
 * The fallback when a model ships no template: ChatML, as llama.cpp also defaults to. A model
 * without ChatML special tokens still sees a clear turn structure as plain text.
 */
export const DEFAULT_CHAT_TEMPLATE =
  "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/** A model's chat template (GGUF `tokenizer.chat_template` or tokenizer_config.json), rendered with @huggingface/jinja. */
export class ChatTemplate {
  private readonly template: Template;

  constructor(
    readonly source: string = DEFAULT_CHAT_TEMPLATE,
    private readonly specials: { bosToken: string; eosToken: string } = { bosToken: '', eosToken: '' },
  ) {
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new Error(`invalid chat template: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  render(messages: ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): string {
    try {
      return this.template.render({
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? true,
        bos_token: this.specials.bosToken,
        eos_token: this.specials.eosToken,
      });
    } catch (err) {
      // templates reject conversations they cannot express with raise_exception(...)
      throw new Error(`chat template refused the conversation: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}
