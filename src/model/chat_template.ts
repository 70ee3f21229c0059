import { Template } from '@huggingface/jinja';

/** A tool call an assistant made, as chat templates read it: `arguments` parsed, not a JSON string. */
export interface TemplateToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: unknown };
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  /** an assistant's calls (content may then be empty) */
  tool_calls?: TemplateToolCall[];
  /** a tool message: the call it answers */
  tool_call_id?: string;
  name?: string;
}

/** A tool offered to the model, in the OpenAI shape that Hugging Face templates read as `tools`. */
export interface TemplateTool {
  type: 'function';
  function: { name: string; description?: string; parameters?: unknown };
}

/**
 * The fallback when a model ships no template: ChatML, as llama.cpp also defaults to. A model
 * without ChatML special tokens still sees a clear turn structure as plain text. Tools follow the
 * Hermes convention (Qwen2.5's templates too): the tools listed in a system turn, calls as
 * `<tool_call>{"name": ..., "arguments": ...}</tool_call>`, results as `<tool_response>` in a user
 * turn; a conversation without tools renders as plain ChatML.
 */
export const DEFAULT_CHAT_TEMPLATE =
  '{% if tools %}' +
  "{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}" +
  "{{ 'You may call one or more functions. Their signatures, as JSON:\\n<tools>\\n' }}" +
  "{% for t in tools %}{{ t | tojson + '\\n' }}{% endfor %}" +
  "{{ '</tools>\\nTo call a function, reply with <tool_call>{\"name\": <function-name>, \"arguments\": <args-json-object>}</tool_call>.<|im_end|>\\n' }}" +
  '{% endif %}' +
  '{% for m in messages %}' +
  "{% if m['role'] == 'system' and tools and loop.first %}" +
  "{% elif m['role'] == 'tool' %}{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + '\\n</tool_response><|im_end|>\\n' }}" +
  "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}" +
  "{% if m['tool_calls'] %}{% for c in m['tool_calls'] %}{{ '<tool_call>\\n{\"name\": \"' + c['function']['name'] + '\", \"arguments\": ' + c['function']['arguments'] | tojson + '}\\n</tool_call>' }}{% endfor %}{% endif %}" +
  "{{ '<|im_end|>\\n' }}{% endif %}" +
  '{% endfor %}' +
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

  /** `tools`: offered to the model (templates list them in the prompt); omitted when empty. */
  render(messages: ChatMessage[], options: { addGenerationPrompt?: boolean; tools?: readonly TemplateTool[] } = {}): string {
    try {
      return this.template.render({
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? true,
        bos_token: this.specials.bosToken,
        eos_token: this.specials.eosToken,
        ...(options.tools?.length ? { tools: options.tools } : {}),
      });
    } catch (err) {
      // templates reject conversations they cannot express with raise_exception(...)
      throw new Error(`chat template refused the conversation: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
}
