import { createWriteStream } from 'node:fs';
import { basename, extname } from 'node:path';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Gpu } from '../gpu/gpu.ts';
import { Engine } from '../engine/engine.ts';
import { generate } from '../engine/generate.ts';
import { ChatTemplate, DEFAULT_CHAT_TEMPLATE } from '../model/chat_template.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { GpuModel } from '../model/gpu_model.ts';
import { type ModelSource, openModel } from '../model/source.ts';
import type { CostModel } from '../scheduler/cost_model.ts';
import { EdfScheduler } from '../scheduler/edf.ts';
import { FcfsScheduler } from '../scheduler/fcfs.ts';
import { OnlineCostModel } from '../scheduler/online_cost.ts';
import type { Scheduler, Slo } from '../scheduler/scheduler.ts';
import { SloScheduler } from '../scheduler/slo.ts';
import { startServer } from '../server/app.ts';

export interface ServeCliOptions {
  /** append every engine step to this JSONL file (for `profile --from-steps`) */
  recordSteps?: string;
  model?: string;
  tokenizer?: string;
  modelName?: string;
  host: string;
  port: number;
  apiKey?: string;
  maxBatch?: number;
  kvMemory: number;
  tokenBudget?: number;
  maxWaiting?: number;
  /** seconds */
  drainTimeout: number;
  device: DeviceMode;
  /** scheduling policy; default fcfs */
  policy?: string;
  /** a cost model file (`wgserve profile`) for edf and slo */
  costModel?: string;
  /** `NAME=ttft:MS,tpot:MS,deadline:MS` each */
  sloClass?: string[];
}

export const POLICIES = ['fcfs', 'edf', 'slo'] as const;

const SLO_KEYS: Record<string, keyof Slo> = { ttft: 'ttftMs', tpot: 'tpotMs', deadline: 'deadlineMs' };

/** Parses `--slo-class` values (`interactive=ttft:500,tpot:50`) into classes by name. */
export function parseSloClasses(specs: readonly string[]): Record<string, Slo> {
  const classes: Record<string, Slo> = {};
  for (const spec of specs) {
    const m = /^([A-Za-z0-9_.-]+)=(.+)$/.exec(spec.trim());
    if (!m) throw new Error(`--slo-class ${JSON.stringify(spec)}: expected NAME=ttft:MS,tpot:MS,deadline:MS (any of the three)`);
    const slo: Slo = {};
    for (const part of m[2].split(',')) {
      const [k, v, extra] = part.split(':').map((x) => x.trim());
      const key = SLO_KEYS[k];
      const ms = Number(v);
      if (!key || extra !== undefined || v === undefined || v === '' || !Number.isFinite(ms) || ms <= 0) {
        throw new Error(`--slo-class ${JSON.stringify(spec)}: ${JSON.stringify(part)} is not ttft:MS, tpot:MS or deadline:MS with MS > 0`);
      }
      slo[key] = ms;
    }
    classes[m[1]] = slo;
  }
  return classes;
}

/**
 * The engine's scheduler for `--policy`: fcfs; edf (with the cost model when given); slo with the
 * --cost-model file, or else an OnlineCostModel fed from the engine's measured steps (the caller
 * chains `observe` onto engine.onStep).
 */
export async function schedulerFor(policy: string, costModelFile: string | undefined, kvCapacityTokens: number): Promise<{ scheduler: Scheduler; cost?: CostModel; online?: OnlineCostModel }> {
  if (!(POLICIES as readonly string[]).includes(policy)) throw new Error(`--policy must be one of ${POLICIES.join(', ')}, got ${JSON.stringify(policy)}`);
  if (policy === 'fcfs') {
    if (costModelFile) throw new Error('--cost-model is for --policy edf or slo');
    return { scheduler: new FcfsScheduler() };
  }
  let cost: CostModel | undefined;
  if (costModelFile) {
    const { loadCostModel } = await import('../sim/cost/fitted.ts');
    cost = loadCostModel(costModelFile);
  }
  if (policy === 'edf') return { scheduler: new EdfScheduler(cost), cost };
  if (cost) return { scheduler: new SloScheduler(cost), cost };
  const online = new OnlineCostModel(kvCapacityTokens);
  return { scheduler: new SloScheduler(online), cost: online, online };
}

/** The id a model file is served under: its file (or directory) name without the extension. */
export function modelIdOf(path: string): string {
  const name = basename(path.replace(/[/\\]+$/, ''));
  const ext = extname(name);
  return ext === '.gguf' || ext === '.bin' ? name.slice(0, -ext.length) : name;
}

/**
 * Loads the model, serves the OpenAI-compatible API until SIGTERM or SIGINT, then drains: new
 * requests get 503, running ones up to --drain-timeout to finish, the rest are cancelled; exit 0.
 */
export async function serveCli(o: ServeCliOptions): Promise<void> {
  const sloClasses = parseSloClasses(o.sloClass ?? []); // flag errors before loading anything
  const gpu = await Gpu.open({ mode: o.device });
  let model: GpuModel | undefined;
  try {
    const path = o.model ?? DEFAULT_MODEL;
    const source = await openModel(path, { tokenizer: o.tokenizer });
    model = GpuModel.load(gpu, source, { kvMemoryBytes: o.kvMemory });
    // compile the prefill, decode and sampling pipelines now rather than in the first request
    const warmup = source.tokenizer.encode('Once upon a time, there was a little girl who liked to play in the park.');
    await generate(model, source.tokenizer, [{ tokens: warmup, options: { maxTokens: 2, temperature: 0, topK: 0, topP: 1, seed: 0, stop: [] } }]);
    const layout = model.kv.layout;
    const kvTokens = Math.floor(model.kv.pool.numBlocks / layout.nKvHeads) * layout.blockSize;
    const { scheduler, cost, online } = await schedulerFor(o.policy ?? 'fcfs', o.costModel, kvTokens);
    const engine = new Engine(model, source.tokenizer, { maxBatch: o.maxBatch, tokenBudget: o.tokenBudget, maxWaiting: o.maxWaiting, scheduler });
    if (online) engine.onStep = (s) => online.observe(s);
    if (o.recordSteps) {
      const record = createWriteStream(o.recordSteps, { flags: 'a' });
      const previous = engine.onStep;
      engine.onStep = (s) => {
        previous?.(s);
        record.write(JSON.stringify({ shape: s.shape, seconds: s.seconds, periodSeconds: s.periodSeconds }) + '\n');
      };
    }
    const modelId = o.modelName ?? modelIdOf(path);
    const server = await startServer({ engine, modelId, template: chatTemplate(source), apiKey: o.apiKey, host: o.host, port: o.port, logger: { level: 'info' }, sloClasses });

    const auth = o.apiKey ? ` -H 'Authorization: Bearer ${o.apiKey}'` : '';
    const classes = Object.entries(sloClasses).map(([k, v]) => `${k} (${[v.ttftMs && `ttft ${v.ttftMs} ms`, v.tpotMs && `tpot ${v.tpotMs} ms`, v.deadlineMs && `deadline ${v.deadlineMs} ms`].filter(Boolean).join(', ')})`);
    if (scheduler.name !== 'fcfs' || classes.length) console.log(`wgserve: scheduler ${scheduler.name}${cost ? `, cost model: ${cost.describe()}` : ''}${classes.length ? `; SLO classes: ${classes.join('; ')}` : ''}`);
    console.log(`wgserve: serving ${modelId} (${source.format}, context ${model.config.contextLength}) on ${gpu.adapter.description} at ${server.url}`);
    console.log(
      `wgserve: try  curl ${server.url}/v1/completions -H 'Content-Type: application/json'${auth} ` +
        `-d '{"model": "${modelId}", "prompt": "Once upon a time", "max_tokens": 32}'`,
    );

    await new Promise<void>((resolve) => {
      const shutdown = (signal: string) => {
        process.off('SIGTERM', onTerm);
        process.off('SIGINT', onInt);
        console.log(`wgserve: ${signal}: draining (${server.inFlight} in flight, up to ${o.drainTimeout} s)`);
        void server.drain(o.drainTimeout * 1000).then(({ cancelled }) => {
          console.log(`wgserve: drained${cancelled ? `, ${cancelled} request(s) cancelled at the deadline` : ''}; bye`);
          resolve();
        });
      };
      const onTerm = () => shutdown('SIGTERM');
      const onInt = () => shutdown('SIGINT');
      process.on('SIGTERM', onTerm);
      process.on('SIGINT', onInt);
    });
    await engine.idle();
  } finally {
    // a live device keeps dawn.node's event polling running: release it on every path
    model?.destroy();
    gpu.destroy();
  }
  process.exit(0);
}

/** The model's own chat template, or ChatML when it has none or ours cannot parse it. */
function chatTemplate(source: ModelSource): ChatTemplate {
  const vocab = source.tokenizer.vocab;
  const specials = {
    bosToken: vocab.bos !== null ? (vocab.tokens[vocab.bos] ?? '') : '',
    eosToken: vocab.eos !== null ? (vocab.tokens[vocab.eos] ?? '') : '',
  };
  try {
    return new ChatTemplate(source.chatTemplate ?? DEFAULT_CHAT_TEMPLATE, specials);
  } catch (err) {
    console.error(`wgserve: warning: the model's chat template cannot be used (${err instanceof Error ? err.message : String(err)}); chat uses ChatML`);
    return new ChatTemplate(DEFAULT_CHAT_TEMPLATE, specials);
  }
}
