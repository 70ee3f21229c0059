import { createWriteStream } from 'node:fs';
import { basename, extname } from 'node:path';
import type { DeviceMode } from '../gpu/adapter.ts';
import { Engine } from '../engine/engine.ts';
import type { SubgroupMode } from '../../kernels/subgroups.ts';
import { type KvDtypeChoice, loadServingModel } from '../engine/load.ts';
import { ChatTemplate, DEFAULT_CHAT_TEMPLATE } from '../model/chat_template.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { type ModelSource, openModel } from '../model/source.ts';
import type { CostModel } from '../scheduler/cost_model.ts';
import { EdfScheduler } from '../scheduler/edf.ts';
import { FcfsScheduler } from '../scheduler/fcfs.ts';
import { OnlineCostModel } from '../scheduler/online_cost.ts';
import type { Scheduler, Slo } from '../scheduler/scheduler.ts';
import { SloScheduler } from '../scheduler/slo.ts';
import { startServer } from '../server/app.ts';
import { Cluster } from '../workers/cluster.ts';
import { ChildProcessPlane, type ControlPlane } from '../workers/control.ts';
import { natsControlPlane } from '../workers/nats_link.ts';
import { modelFingerprint } from '../workers/protocol.ts';
import type { ServingEngine } from '../engine/serving.ts';
import { type HeadPatternCliOptions, headPatternFromOptions } from '../kv/head_pattern.ts';
import type { AnnAttentionOptions } from '../ann/ann_attention.ts';

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
  /** seconds to receive a request (408 beyond) */
  bodyTimeout: number;
  /** seconds an idle keep-alive connection stays open */
  keepAliveTimeout: number;
  /** body limit of POST /v1/constraints, bytes */
  constraintBodyLimit: number;
  /** bytes the registered constraint sets may take */
  constraintMemory: number;
  device: DeviceMode;
  /** scheduling policy; default fcfs */
  policy?: string;
  /** a cost model file (`wgserve profile`) for edf and slo */
  costModel?: string;
  /** `NAME=ttft:MS,tpot:MS,deadline:MS` each */
  sloClass?: string[];
  /** prefill and decode in worker processes (spawned, or found through --nats) */
  disaggregate?: boolean;
  prefillWorkers?: number;
  decodeWorkers?: number;
  nats?: string;
  /** seconds to wait for the workers */
  workerTimeout?: number;
  /** head-wise KV (--head-pattern ...): the pattern file and how to binarise it */
  headwise?: HeadPatternCliOptions;
  /** decode attention with a key index (--ann, docs/ann.md); disaggregated: every worker's */
  ann?: AnnAttentionOptions;
  /** false (--no-warmup): serve without compiling first; the first requests compile what they use */
  warmup?: boolean;
  /** --kv-dtype (disaggregated: every worker's) */
  kvDtype?: KvDtypeChoice;
  /** --subgroups (disaggregated: every worker's) */
  subgroups?: SubgroupMode;
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
  const path = o.model ?? DEFAULT_MODEL;
  if (!o.disaggregate && o.nats) throw new Error('--nats is for --disaggregate');
  const backend = o.disaggregate ? await disaggregated(o, path) : await colocated(o, path);
  try {
    const { engine, source } = backend;
    const modelId = o.modelName ?? modelIdOf(path);
    const server = await startServer({ engine, modelId, template: chatTemplate(source), apiKey: o.apiKey, host: o.host, port: o.port, logger: { level: 'info' }, sloClasses, bodyTimeoutSeconds: o.bodyTimeout, keepAliveTimeoutSeconds: o.keepAliveTimeout, constraintBodyLimit: o.constraintBodyLimit, constraintMemory: o.constraintMemory });

    const auth = o.apiKey ? ` -H 'Authorization: Bearer ${o.apiKey}'` : '';
    const classes = Object.entries(sloClasses).map(([k, v]) => `${k} (${[v.ttftMs && `ttft ${v.ttftMs} ms`, v.tpotMs && `tpot ${v.tpotMs} ms`, v.deadlineMs && `deadline ${v.deadlineMs} ms`].filter(Boolean).join(', ')})`);
    if (classes.length) console.log(`wgserve: SLO classes: ${classes.join('; ')}`);
    console.log(`wgserve: serving ${modelId} (${source.format}, context ${source.config.contextLength}) on ${backend.description} at ${server.url}`);
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
    await backend.close();
  }
  process.exit(0);
}

interface Backend {
  engine: ServingEngine;
  source: ModelSource;
  /** where it runs, for the startup line */
  description: string;
  /** releases the device, or stops the workers */
  close(): Promise<void>;
}

/** One process, one device: the Engine over the model on this machine's GPU. */
async function colocated(o: ServeCliOptions, path: string): Promise<Backend> {
  const loaded = await loadServingModel({ device: o.device, path, tokenizer: o.tokenizer, kvMemory: o.kvMemory, headwise: o.headwise, ann: o.ann, kvDtype: o.kvDtype, subgroups: o.subgroups, warmUp: o.warmup });
  const { gpu, source, model } = loaded;
  try {
    const { scheduler, cost, online } = await schedulerFor(o.policy ?? 'fcfs', o.costModel, model.kv.maxSequenceTokens);
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
    if (scheduler.name !== 'fcfs') console.log(`wgserve: scheduler ${scheduler.name}${cost ? `, cost model: ${cost.describe()}` : ''}`);
    return { engine, source, description: gpu.adapter.description, close: async () => loaded.destroy() };
  } catch (err) {
    loaded.destroy();
    throw err;
  }
}

/**
 * The front of disaggregated serving: no device here, the model file only for its tokenizer,
 * config and fingerprint; prefill and decode workers spawned as child processes, or found
 * through NATS.
 */
async function disaggregated(o: ServeCliOptions, path: string): Promise<Backend> {
  if (o.policy && o.policy !== 'fcfs') throw new Error('--policy applies to colocated serving; with --disaggregate the front places requests on workers (docs/disaggregation.md)');
  if (o.recordSteps || o.costModel) throw new Error('--record-steps and --cost-model apply to colocated serving');
  const source = await openModel(path, { tokenizer: o.tokenizer });
  const fingerprint = modelFingerprint(source, headPatternFromOptions(o.headwise ?? {}, source.config));
  const want = { prefill: o.prefillWorkers ?? 1, decode: o.decodeWorkers ?? 1 };
  let plane: ControlPlane;
  if (o.nats) plane = await natsControlPlane(o.nats);
  else {
    const args = ['--model', path, ...(o.tokenizer ? ['--tokenizer', o.tokenizer] : []), '--device', o.device, '--kv-memory', String(o.kvMemory), ...headPatternArgs(o.headwise), ...annArgs(o.ann), '--kv-dtype', o.kvDtype ?? 'auto', '--subgroups', o.subgroups ?? 'auto', ...(o.warmup === false ? ['--no-warmup'] : [])];
    if (o.maxBatch) args.push('--max-batch', String(o.maxBatch));
    if (o.tokenBudget) args.push('--token-budget', String(o.tokenBudget));
    plane = new ChildProcessPlane([...Array.from({ length: want.prefill }, () => ({ role: 'prefill' as const, args })), ...Array.from({ length: want.decode }, () => ({ role: 'decode' as const, args }))]);
  }
  const cluster = new Cluster({ plane, tokenizer: source.tokenizer, config: source.config, fingerprint, maxWaiting: o.maxWaiting });
  try {
    console.log(`wgserve: ${o.nats ? `waiting for workers on ${o.nats}` : 'starting workers'}: ${want.prefill} prefill, ${want.decode} decode`);
    await cluster.ready(want, (o.workerTimeout ?? 120) * 1000);
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return { engine: cluster, source, description: `${want.prefill} prefill + ${want.decode} decode workers${o.nats ? ` via ${o.nats}` : ''}`, close: () => cluster.close() };
}

/** The head-wise KV options again as command-line arguments (for spawned workers). */
function headPatternArgs(h: HeadPatternCliOptions = {}): string[] {
  const flags = { headPattern: '--head-pattern', retrievalFraction: '--retrieval-fraction', gateThreshold: '--gate-threshold', sink: '--sink', recent: '--recent' } as const;
  return Object.entries(flags).flatMap(([k, flag]) => (h[k as keyof typeof flags] === undefined ? [] : [flag, String(h[k as keyof typeof flags])]));
}

/** --ann again as command-line arguments (for spawned workers). */
function annArgs(ann?: AnnAttentionOptions): string[] {
  if (!ann) return [];
  return ['--ann', ...(ann.threshold === undefined ? [] : ['--ann-threshold', String(ann.threshold)])];
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
