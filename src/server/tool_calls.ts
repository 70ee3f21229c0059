/**
 * A chat choice's generated text as OpenAI tool calls, whole or as stream deltas. With a named
 * function the text is that function's arguments; with "required" it is a JSON array of
 * {"name", "arguments"} objects (both generated under a JSON-schema constraint, src/server/openai.ts
 * toolGuide, so they parse); with "auto" the model decides, and calls written in the Hermes
 * convention (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`, the default chat template's
 * and Qwen2.5's) are parsed when the choice ends; any other text is content.
 */
import type { ToolChoice } from './openai.ts';

export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** One stream chunk's piece of a call: its header (id, type, name) first, then arguments text. */
export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function: { name?: string; arguments: string };
}

export interface ChatDelta {
  content?: string;
  tool_calls?: ToolCallDelta[];
}

const OPEN = '<tool_call>';
const CALL_BLOCK = /<tool_call>([\s\S]*?)<\/tool_call>/g;
/** A call object's text up to its arguments value, as the "required" schema orders it (compact JSON). */
const CALL_HEAD = /^\{"name":("(?:[^"\\]|\\.)*"),"arguments":$/;

export class ToolCallOutput {
  readonly calls: ToolCall[] = [];
  private content = '';
  /** auto: text from the first `<tool_call>` on, parsed at the end */
  private held = '';
  private holding = false;
  // "required": a scanner over the JSON array of calls
  private depth = 0;
  private inString = false;
  private escaped = false;
  private head = '';
  private part: 'between' | 'head' | 'args' | 'tail' = 'between';

  constructor(
    private readonly choice: ToolChoice,
    private readonly toolNames: ReadonlySet<string>,
    private readonly newCallId: () => string,
  ) {}

  /** The delta for the next piece of generated text (null: nothing to send yet). */
  push(text: string): ChatDelta | null {
    switch (this.choice.mode) {
      case 'named':
        return this.argsDelta(0, text, this.choice.name);
      case 'required':
        return this.scan(text);
      case 'auto':
        return this.hold(text);
      case 'none':
        this.content += text;
        return text ? { content: text } : null;
    }
  }

  /** What was held back, once the choice has ended (auto's calls, or its text when they do not parse). */
  end(): ChatDelta | null {
    if (this.choice.mode !== 'auto' || !this.held) return null;
    const calls = this.holding ? this.parseBlocks(this.held) : null;
    const held = this.held;
    this.held = '';
    if (!calls) {
      this.content += held;
      return { content: held };
    }
    const deltas = calls.map(({ name, args }, i) => {
      const call = this.addCall(name);
      call.function.arguments = args;
      return { index: i, id: call.id, type: 'function' as const, function: { name, arguments: args } };
    });
    return { tool_calls: deltas };
  }

  /** The whole message once the choice has ended. */
  message(): { content: string | null; tool_calls?: ToolCall[] } {
    if (!this.calls.length) return { content: this.content };
    return { content: this.content.trim() ? this.content : null, tool_calls: this.calls };
  }

  /** OpenAI's finish_reason: "tool_calls" when the model chose to call (a named function is forced: "stop"). */
  finishReason(reason: 'stop' | 'length'): 'stop' | 'length' | 'tool_calls' {
    return reason === 'stop' && this.calls.length && this.choice.mode !== 'named' ? 'tool_calls' : reason;
  }

  private addCall(name: string): ToolCall {
    const call: ToolCall = { id: this.newCallId(), type: 'function', function: { name, arguments: '' } };
    this.calls.push(call);
    return call;
  }

  /** Arguments text for call `index`; the call's header goes with its first piece. */
  private argsDelta(index: number, text: string, name?: string): ChatDelta | null {
    const fresh = index === this.calls.length;
    const call = fresh ? this.addCall(name!) : this.calls[index];
    call.function.arguments += text;
    if (!fresh && !text) return null;
    return { tool_calls: [fresh ? { index, id: call.id, type: 'function', function: { name: call.function.name, arguments: text } } : { index, function: { arguments: text } }] };
  }

  /**
   * "required": `[{"name":"f","arguments":{...}},...]`. A call's header is sent when its
   * `"arguments":` has been read; its arguments stream until their value closes.
   */
  private scan(text: string): ChatDelta | null {
    const deltas: ToolCallDelta[] = [];
    let args = '';
    const flush = () => {
      if (!args) return;
      const d = this.argsDelta(this.calls.length - 1, args)?.tool_calls;
      if (d) deltas.push(...d);
      args = '';
    };
    for (const ch of text) {
      const structural = !this.inString;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (ch === '\\') this.escaped = true;
        else if (ch === '"') this.inString = false;
      } else if (ch === '"') this.inString = true;
      else if (ch === '{' || ch === '[') this.depth++;
      else if (ch === '}' || ch === ']') this.depth--;

      if (this.part === 'between') {
        if (structural && ch === '{' && this.depth === 2) {
          this.part = 'head';
          this.head = ch;
        }
      } else if (this.part === 'head') {
        this.head += ch;
        const m = CALL_HEAD.exec(this.head);
        if (m) {
          const call = this.argsDelta(this.calls.length, '', JSON.parse(m[1]) as string);
          if (call?.tool_calls) deltas.push(...call.tool_calls);
          this.part = 'args';
        }
      } else if (this.part === 'args') {
        args += ch;
        // the value closes back at the call object's depth, outside a string
        if (!this.inString && this.depth === 2) {
          flush();
          this.part = 'tail';
        }
      } else if (structural && ch === '}' && this.depth === 1) this.part = 'between';
    }
    flush();
    return deltas.length ? { tool_calls: deltas } : null;
  }

  /** auto: content streams until a `<tool_call>` begins; a text that may still become one waits. */
  private hold(text: string): ChatDelta | null {
    if (this.holding) {
      this.held += text;
      return null;
    }
    const pending = this.held + text;
    const at = pending.indexOf(OPEN);
    let keep = at >= 0 ? pending.length - at : 0;
    if (at < 0) for (let n = Math.min(OPEN.length - 1, pending.length); n > 0 && !keep; n--) if (OPEN.startsWith(pending.slice(-n))) keep = n;
    this.holding = at >= 0;
    const out = pending.slice(0, pending.length - keep);
    this.held = pending.slice(pending.length - keep);
    this.content += out;
    return out ? { content: out } : null;
  }

  /** Calls in `<tool_call>` blocks when the text is nothing else (whitespace aside), else null. */
  private parseBlocks(text: string): { name: string; args: string }[] | null {
    const calls: { name: string; args: string }[] = [];
    for (const m of text.matchAll(CALL_BLOCK)) {
      let v: unknown;
      try {
        v = JSON.parse(m[1]) as unknown;
      } catch {
        return null;
      }
      if (typeof v !== 'object' || v === null) return null;
      const { name, arguments: args } = v as { name?: unknown; arguments?: unknown };
      if (typeof name !== 'string' || !this.toolNames.has(name) || typeof args !== 'object' || args === null || Array.isArray(args)) return null;
      calls.push({ name, args: JSON.stringify(args) });
    }
    return calls.length && !text.replace(CALL_BLOCK, '').trim() ? calls : null;
  }
}
