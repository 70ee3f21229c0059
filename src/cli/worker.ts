import { hostname } from 'node:os';
import type { DeviceMode } from '../gpu/adapter.ts';
import type { AnnAttentionOptions } from '../ann/ann_attention.ts';
import type { SubgroupMode } from '../../kernels/subgroups.ts';
import type { KvDtypeChoice } from '../engine/load.ts';
import type { HeadPatternCliOptions } from '../kv/head_pattern.ts';
import { DEFAULT_MODEL } from '../model/default_model.ts';
import { ipcWorkerLink } from '../workers/control.ts';
import { natsWorkerLink } from '../workers/nats_link.ts';
import type { WorkerRole } from '../workers/protocol.ts';
import { runWorker } from '../workers/worker.ts';

export interface WorkerCliOptions {
  role: WorkerRole;
  model?: string;
  tokenizer?: string;
  id?: string;
  adapter?: number;
  nats?: string;
  ipc: boolean;
  kvMemory: number;
  /** head-wise KV (--head-pattern ...) */
  headwise?: HeadPatternCliOptions;
  /** decode attention with a key index (--ann, docs/ann.md) */
  ann?: AnnAttentionOptions;
  /** false (--no-warmup): register without compiling first */
  warmup?: boolean;
  /** --kv-dtype */
  kvDtype?: KvDtypeChoice;
  /** --subgroups */
  subgroups?: SubgroupMode;
  maxBatch?: number;
  tokenBudget?: number;
  dataHost?: string;
  dataPort: number;
  advertise?: string;
  /** seconds */
  transferTimeout?: number;
  device: DeviceMode;
}

/** `wgserve worker`: one prefill or decode worker; returns the exit code. */
export async function workerCli(o: WorkerCliOptions): Promise<number> {
  if (Boolean(o.nats) === o.ipc) throw new Error('worker: give exactly one control plane: --nats URL (workers on any host) or --ipc (spawned by serve --disaggregate)');
  const id = o.id ?? `${o.role}-${hostname()}-${process.pid}`;
  const dataHost = o.dataHost ?? (o.nats ? '0.0.0.0' : '127.0.0.1');
  const advertiseHost = o.advertise ?? (dataHost === '0.0.0.0' ? hostname() : dataHost);
  const log = (line: string) => console.error(`wgserve worker ${id}: ${line}`);
  // a stray rejection (a peer gone mid-transfer) is logged: it must not take the worker's other sequences down
  process.on('unhandledRejection', (err) => log(`unhandled rejection: ${err instanceof Error ? err.stack : String(err)}`));
  const link = o.nats ? await natsWorkerLink(o.nats, id) : ipcWorkerLink();
  const transferTimeoutMs = o.transferTimeout === undefined ? undefined : o.transferTimeout * 1000;
  const code = await runWorker({ ...o, id, model: o.model ?? DEFAULT_MODEL, dataHost, advertiseHost, transferTimeoutMs, link, log });
  // a released device can leave dawn.node's polling alive: exit explicitly
  process.exit(code);
}
