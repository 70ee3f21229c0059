import { describe, expect, it } from 'vitest';
import { ChatTemplate } from '../src/model/chat_template.ts';

describe('chat templates', () => {
  const chat = [
    { role: 'system' as const, content: 'Be brief.' },
    { role: 'user' as const, content: 'Hi' },
  ];

  it('defaults to ChatML with a generation prompt', () => {
    expect(new ChatTemplate().render(chat)).toBe('<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    expect(new ChatTemplate().render(chat, { addGenerationPrompt: false })).not.toContain('assistant');
  });

  // like transformers, block tags trim the newline that follows them (trim_blocks), so newlines are emitted as strings
  it("renders a model's own template with its special tokens and exceptions", () => {
    const source =
      "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}" +
      "[{{ m.role | upper }}] {{ m.content }}{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %} [ASSISTANT]{% endif %}";
    const t = new ChatTemplate(source, { bosToken: '<s>', eosToken: '</s>' });
    expect(t.render(chat)).toBe('<s>[SYSTEM] Be brief.\n[USER] Hi [ASSISTANT]');
    expect(() => t.render([{ role: 'tool', content: '{}' }])).toThrow(/refused the conversation: no tools/);
  });

  it('reports a broken template clearly', () => {
    expect(() => new ChatTemplate('{% for m in messages %}')).toThrow(/invalid chat template/);
  });
});
