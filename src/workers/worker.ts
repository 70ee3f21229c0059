import { fromWire } from '../constraints/wire.ts';
import { hostname } from 'node:os';
import { Engine, type EngineHandle, type EngineRequest, type SequenceEvents, type StepStats } from '../engine/engine.ts';
import type { SubgroupMode } from '../../kernels/subgroups.ts';
import { type KvDtypeChoice, loadServingModel } from '../engine/load.ts';
import type { DeviceMode } from '../gpu/adapter.ts';
import type { AnnAttentionOptions } from '../ann/ann_attention.ts';
import type { HeadPatternCliOptions } from '../kv/head_pattern.ts';
import { STATUS_INTERVAL_MS, type ToWorker, type WorkerInfo, type WorkerLink } from './control.ts';
import { KvReceiver, KvSender, type Transfer } from './kv_transfer.ts';
import { type RequestSpec, type WorkerRole, modelFingerprint } from './protocol.ts';

export interface WorkerOptions {
  id: string;
  role: WorkerRole;
  model: string;
  tokenizer?: string;
  device: DeviceMode;
  /** adapter index (several GPUs in one box) */
  adapter?: number;
  kvMemory: number;
  /** head-wise KV (--head-pattern ...); the front and every worker must give the same */
  headwise?: HeadPatternCliOptions;
  /** decode attention with a key index (--ann): a decode worker builds each index from the decode queries it sees (docs/ann.md) */
  ann?: AnnAttentionOptions;
  /** false (--no-warmup): register without compiling first */
  warmup?: boolean;
  /** --kv-dtype */
  kvDtype?: KvDtypeChoice;
  /** --subgroups */
  subgroups?: SubgroupMode;
  maxBatch?: number;
  tokenBudget?: number;
  /** decode workers: where the KV listener binds, and the host name other workers reach it by */
  dataHost: string;
  dataPort: number;
  advertiseHost: string;
  /** a KV transfer's limit on both ends (default TRANSFER_TIMEOUT_MS) */
  transferTimeoutMs?: number;
  link: WorkerLink;
  log: (line: string) => void;
}

interface Live {
  handle: EngineHandle | null;
  transfer?: Transfer;
}

/**
 * One worker: its own device, the model's weights and KV cache, an Engine running the
 * iteration-level loop over the sequences the front gave it. A prefill worker computes each
 * prompt and its first token and streams the KV to the decode worker the front chose; a decode
 * worker takes sequences over from their KV and generates the rest. Tokens and finishes go to
 * the front over the control link. Resolves with the process's exit code when the worker stops
 * (the front went away, it refused this worker, or SIGTERM).
 */
export async function runWorker(o: WorkerOptions): Promise<number> {
  const loaded = await loadServingModel({ device: o.device, adapter: o.adapter, path: o.model, tokenizer: o.tokenizer, kvMemory: o.kvMemory, headwise: o.headwise, ann: o.ann, kvDtype: o.kvDtype, subgroups: o.subgroups, warmUp: o.warmup });
  const { gpu, source, model } = loaded;
  let receiver: KvReceiver | undefined;
  let sender: KvSender | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    const fingerprint = modelFingerprint(source, model.headPattern);
    const engine = new Engine(model, source.tokenizer, { maxBatch: o.maxBatch, tokenBudget: o.tokenBudget });
    const steps: StepStats[] = [];
    engine.onStep = (s) => steps.push(s);
    const live = new Map<string, Live>();
    const key = (rid: number, attempt: number) => `${rid}:${attempt}`;
    const link = o.link;

    /** Events of one request: tokens and the finish go to the front; a pending handover is called off. */
    const eventsFor = (spec: RequestSpec): SequenceEvents => {
      const { rid, attempt } = spec;
      let index = spec.generated.length;
      return {
        onToken: (event) => link.send({ type: 'token', rid, attempt, index: index++, event }),
        onFinish: (reason, usage, error) => {
          live.get(key(rid, attempt))?.transfer?.abort(reason);
          live.delete(key(rid, attempt));
          link.send({ type: 'finish', rid, attempt, generated: index, reason, usage, error: error?.message });
        },
      };
    };
    const requestOf = (spec: RequestSpec, events: SequenceEvents): EngineRequest => ({
      prompt: spec.prompt,
      generated: spec.generated,
      sampling: spec.sampling,
      slo: spec.slo,
      priority: spec.priority,
      events,
      ...(spec.constraint ? { constraint: fromWire(spec.constraint, engine.config.vocabSize) } : {}),
    });

    let info: WorkerInfo = { id: o.id, role: o.role, fingerprint, device: gpu.adapter.description, pid: process.pid, host: hostname(), maxSequenceTokens: engine.maxSequenceTokens };
    if (o.role === 'decode') {
      receiver = new KvReceiver({
        engine,
        workerId: o.id,
        fingerprint,
        log: o.log,
        timeoutMs: o.transferTimeoutMs,
        adopt: (spec, kv) => {
          const entry: Live = { handle: null };
          live.set(key(spec.rid, spec.attempt), entry);
          try {
            entry.handle = engine.adopt(requestOf(spec, eventsFor(spec)), kv);
          } catch (err) {
            live.delete(key(spec.rid, spec.attempt));
            return err instanceof Error ? err.message : String(err);
          }
          link.send({ type: 'adopted', rid: spec.rid, attempt: spec.attempt });
          return null;
        },
      });
      const bound = await receiver.listen(o.dataHost, o.dataPort);
      info = { ...info, data: { host: o.advertiseHost, port: bound.port } };
    } else {
      sender = new KvSender({ workerId: o.id, fingerprint, log: o.log, timeoutMs: o.transferTimeoutMs });
    }

    const prefill = (spec: RequestSpec, decode: { id: string; address: { host: string; port: number } }) => {
      const { rid, attempt } = spec;
      const entry: Live = { handle: null, transfer: sender!.begin(decode) };
      live.set(key(rid, attempt), entry);
      try {
        entry.handle = engine.submit({
          ...requestOf(spec, eventsFor(spec)),
          handoff: {
            onKv: (tokens, rows, layers) => entry.transfer!.stream(tokens, rows, layers),
            onHandoff: (generated) => {
              live.delete(key(rid, attempt));
              entry.transfer!.finish({ ...spec, generated }).then(
                (result) => link.send({ type: 'handed-over', rid, attempt, to: decode.id, ...result }),
                (err) => link.send({ type: 'handover-failed', rid, attempt, generated, reason: err instanceof Error ? err.message : String(err) }),
              );
            },
          },
        });
      } catch (err) {
        live.delete(key(rid, attempt));
        entry.transfer!.abort('not admitted');
        link.send({ type: 'finish', rid, attempt, generated: spec.generated.length, reason: 'error', usage: { promptTokens: spec.prompt.length, completionTokens: spec.generated.length }, error: err instanceof Error ? err.message : String(err) });
      }
    };

    return await new Promise<number>((resolve) => {
      let stopping = false;
      const stop = (code: number, why: string) => {
        if (stopping) return;
        stopping = true;
        o.log(`stopping: ${why}`);
        engine.cancelAll();
        void engine.idle().then(() => resolve(code));
      };
      link.onMessage((m: ToWorker) => {
        switch (m.type) {
          case 'welcome':
            o.log(`registered with the front (${o.role}, ${gpu.adapter.description}${info.data ? `, KV on ${info.data.host}:${info.data.port}` : ''})`);
            return;
          case 'refuse':
            o.log(`the front refused this worker: ${m.reason}`);
            stop(1, 'refused');
            return;
          case 'prefill':
            if (o.role !== 'prefill' || stopping) {
              link.send({ type: 'finish', rid: m.req.rid, attempt: m.req.attempt, generated: m.req.generated.length, reason: 'error', usage: { promptTokens: m.req.prompt.length, completionTokens: m.req.generated.length }, error: `worker ${o.id} is ${stopping ? 'stopping' : 'not a prefill worker'}` });
              return;
            }
            prefill(m.req, m.decode);
            return;
          case 'cancel':
            live.get(key(m.rid, m.attempt))?.handle?.cancel();
            return;
        }
      });
      link.onClose(() => stop(0, 'the front went away'));
      // reconnected: a status at once tells the front (its `link` changed) that messages may be lost
      let reconnects = 0;
      link.onReconnect(() => {
        reconnects++;
        o.log('control link reconnected');
        status();
      });
      process.once('SIGTERM', () => stop(0, 'SIGTERM'));
      process.once('SIGINT', () => stop(0, 'SIGINT'));
      const status = () => {
        const kv = engine.kvBlocks();
        const bytes = engine.kvBytesByKind();
        const annBytes = engine.annBytes();
        const stats = sender?.stats ?? { bytes: 0, seconds: 0, transfers: 0 };
        link.send({
          type: 'status',
          worker: info,
          load: {
            waiting: engine.waiting,
            running: engine.running,
            kvBlocksUsed: kv.used,
            kvBlocksTotal: kv.total,
            blockSize: model.blockSize,
            nKvHeads: model.config.nKvHeads,
            ...(model.kv.headwise ? { headwise: model.kv.headwise } : {}),
            ...(bytes ? { kvBytesByKind: bytes } : {}),
            ...(annBytes !== null ? { annBytes } : {}),
            kvBytesSent: stats.bytes,
            kvTransferSeconds: stats.seconds,
            kvTransfers: stats.transfers,
          },
          steps: steps.splice(0),
          link: reconnects,
        });
      };
      status();
      timer = setInterval(status, STATUS_INTERVAL_MS);
    });
  } finally {
    clearInterval(timer);
    sender?.close();
    await receiver?.close();
    await o.link.close().catch(() => {});
    loaded.destroy();
  }
}
