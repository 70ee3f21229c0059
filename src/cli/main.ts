import type { GuideSpec } from '../constraints/guide.ts';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { WeightFormat } from '../../kernels/weights.ts';
import { parseDeviceMode } from '../gpu/adapter.ts';
import type { BenchDisaggOptions } from './bench_disagg.ts';
import type { BenchHeadwiseOptions } from './bench_headwise.ts';
import { benchAnnCommand } from './bench_ann.ts';
import { benchStepCommand } from './bench_step.ts';
import type { HeadPatternCliOptions } from '../kv/head_pattern.ts';
import type { AnnAttentionOptions } from '../ann/ann_attention.ts';
import type { SubgroupMode } from '../../kernels/subgroups.ts';
import type { KvDtypeChoice } from '../engine/load.ts';
import type { ServeCliOptions } from './serve.ts';
import type { SimulateCliOptions } from './simulate.ts';

const deviceOption = () =>
  new Option('--device <mode>', 'adapter: auto (GPU first, software fallback), gpu, or cpu (software)')
    .env('WGSERVE_DEVICE')
    .default('auto');

// Commands load their modules when run, so `--help` and light commands start fast.
const program = new Command()
  .name('wgserve')
  .description('LLM inference serving runtime on WebGPU')
  .showHelpAfterError();

program
  .command('doctor')
  .description('print the WebGPU adapter, its features and limits, and check one kernel against its CPU reference')
  .addOption(deviceOption())
  .action(async (o: { device: string }) => {
    const { doctor } = await import('./doctor.ts');
    if (!(await doctor(parseDeviceMode(o.device)))) process.exitCode = 1;
  });

program
  .command('tokenize')
  .description("print a text's token ids as a JSON array (with BOS where the model adds one), like llama-tokenize --ids")
  .option('--model <file>', 'GGUF file, llama2.c checkpoint or Hugging Face model directory (default: the embedded stories260K)')
  .option('--tokenizer <file>', 'tokenizer.bin for a llama2.c checkpoint (default: beside the model)')
  .requiredOption('--text <text>', 'text to tokenize')
  .option('--no-special', 'do not add BOS/EOS')
  .option('--no-parse-special', 'keep control-token text such as <s> or <|im_start|> as plain text (by default it becomes its id, as in /v1/completions)')
  .action(async (o: { model?: string; tokenizer?: string; text: string; special: boolean; parseSpecial: boolean }) => {
    const { openTokenizer } = await import('../model/source.ts');
    const { DEFAULT_MODEL } = await import('../model/default_model.ts');
    const { encodePromptText } = await import('../model/prompt.ts');
    const tokenizer = await openTokenizer(o.model ?? DEFAULT_MODEL, { tokenizer: o.tokenizer });
    const ids = o.parseSpecial ? encodePromptText(tokenizer, o.text, { addSpecial: o.special }) : tokenizer.encode(o.text, { addSpecial: o.special });
    console.log(JSON.stringify(ids));
  });

const number = (name: string, min: number, max = Infinity) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
  return n;
};
const integer = (name: string, min: number) => (v: string) => {
  const n = number(name, min)(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`${name} must be an integer`);
  return n;
};

/** The head-wise KV options as the loader takes them (commander gives them flat). */
const headPatternOf = ({ headPattern, retrievalFraction, gateThreshold, sink, recent }: HeadPatternCliOptions): HeadPatternCliOptions => ({ headPattern, retrievalFraction, gateThreshold, sink, recent });

/** Head-wise KV options (docs/headwise.md) of serve, generate and worker. */
const headPatternOptions = (c: Command) =>
  c
    .option('--head-pattern <file>', 'head-wise KV: a DuoAttention pattern file (a row of gates per layer, one per KV head); streaming heads keep only --sink + --recent tokens (docs/headwise.md)')
    .option('--retrieval-fraction <f>', 'with --head-pattern: in every layer this fraction of the KV heads, highest gates first, keep full history', number('--retrieval-fraction', 0, 1))
    .option('--gate-threshold <t>', 'with --head-pattern: heads with a gate >= t keep full history (default 0.5)', number('--gate-threshold', 0, 1))
    .option('--sink <n>', 'with --head-pattern: first tokens a streaming head keeps (default 64)', integer('--sink', 0))
    .option('--recent <n>', 'with --head-pattern: latest tokens a streaming head keeps (default 256)', integer('--recent', 1));

/** The KV cache's element type and the subgroup kernels, for serve, generate and worker. */
const kvDtypeOption = (c: Command) =>
  c
    .addOption(new Option('--kv-dtype <type>', 'KV cache element type: f16 halves the cache (pairs packed in 32-bit words, any device); auto: f16 where the device has shader-f16, else f32').choices(['auto', 'f32', 'f16']).default('auto'))
    .addOption(new Option('--subgroups <mode>', 'reductions with subgroup operations (GEMV, RMSNorm, softmax, attention); auto: on a hardware GPU that offers them').choices(['auto', 'on', 'off']).default('auto'));

/** Decode attention with a key index (docs/ann.md) for serve, generate and worker. */
const annOptions = (c: Command) =>
  c
    .option('--ann', 'decode attention with a key index for long contexts: past --ann-threshold keys, a retrieval head (every head without --head-pattern) attends to its first and latest keys (--sink + --recent with a pattern, else 64 + 256) and the keys its index finds (docs/ann.md)', false)
    .option('--ann-threshold <tokens>', 'with --ann: keys a head must hold before it is indexed (default 4096)', integer('--ann-threshold', 1));
interface AnnCliFlags {
  ann?: boolean;
  annThreshold?: number;
}
/** --ann as the model takes it (undefined when off). */
const annOf = (o: AnnCliFlags): AnnAttentionOptions | undefined => {
  if (!o.ann && o.annThreshold !== undefined) throw new InvalidArgumentError('--ann-threshold needs --ann');
  return o.ann ? { threshold: o.annThreshold } : undefined;
};

kvDtypeOption(annOptions(headPatternOptions(program
  .command('generate')
  .description('generate text from a prompt on the GPU: the continuation goes to stdout, load time and speeds to stderr')
  .option('--model <file>', 'GGUF file, llama2.c checkpoint or Hugging Face model directory (default: the embedded stories260K)')
  .option('--tokenizer <file>', 'tokenizer.bin for a llama2.c checkpoint (default: beside the model)')
  .requiredOption('--prompt <text>', 'prompt')
  .option('--max-tokens <n>', 'new tokens at most', integer('--max-tokens', 0), 128)
  .option('--temperature <t>', 'sampling temperature; 0 = greedy', number('--temperature', 0), 0.8)
  .option('--top-k <k>', 'keep the k most likely tokens; 0 = off', integer('--top-k', 0), 40)
  .option('--top-p <p>', 'keep the smallest set of tokens with this probability mass; 1 = off', number('--top-p', 0, 1), 0.95)
  .option('--seed <s>', 'random seed (same seed, same output); default: random', integer('--seed', 0))
  .option('--stop <text...>', 'stop strings (not printed)')
  .option('--choice <text...>', 'structured output: the output is exactly one of these strings')
  .option('--regex <pattern>', 'structured output: the output fully matches this regular expression (JavaScript syntax)')
  .option('--json-schema <file>', 'structured output: the output is JSON valid against this schema (docs/api.md lists the keywords)')
  .option('--kv-memory <bytes>', 'KV cache memory', integer('--kv-memory', 1), 64 * 1024 * 1024))))
  .addOption(deviceOption())
  .action(async (o: HeadPatternCliOptions & AnnCliFlags & { model?: string; tokenizer?: string; prompt: string; maxTokens: number; temperature: number; topK: number; topP: number; seed?: number; stop?: string[]; choice?: string[]; regex?: string; jsonSchema?: string; kvMemory: number; kvDtype: KvDtypeChoice; subgroups: SubgroupMode; device: string }) => {
    const guides = [o.choice && 'choice', o.regex !== undefined && 'regex', o.jsonSchema && 'json-schema'].filter(Boolean);
    if (guides.length > 1) throw new InvalidArgumentError(`give one of --choice, --regex, --json-schema, not ${guides.map((g) => `--${g}`).join(' and ')}`);
    const { readFileSync } = await import('node:fs');
    const guide: GuideSpec | undefined = o.choice
      ? { kind: 'choice', choices: o.choice }
      : o.regex !== undefined
        ? { kind: 'regex', pattern: o.regex }
        : o.jsonSchema
          ? { kind: 'json_schema', schema: JSON.parse(readFileSync(o.jsonSchema, 'utf8')) as unknown }
          : undefined;
    const { generateCli } = await import('./generate.ts');
    await generateCli({
      guide,
      model: o.model,
      tokenizer: o.tokenizer,
      prompt: o.prompt,
      device: parseDeviceMode(o.device),
      kvMemory: o.kvMemory,
      headwise: headPatternOf(o),
      ann: annOf(o),
      kvDtype: o.kvDtype,
      subgroups: o.subgroups,
      sampling: {
        maxTokens: o.maxTokens,
        temperature: o.temperature,
        topK: o.topK,
        topP: o.topP,
        seed: o.seed ?? Math.floor(Math.random() * 2 ** 32),
        stop: o.stop ?? [],
      },
    });
  });

kvDtypeOption(annOptions(headPatternOptions(program
  .command('serve'))))
  .description('serve the OpenAI-compatible HTTP API (completions, chat, models, health, metrics); SIGTERM drains and exits 0')
  .option('--model <file>', 'GGUF file, llama2.c checkpoint or Hugging Face model directory (default: the embedded stories260K)')
  .option('--tokenizer <file>', 'tokenizer.bin for a llama2.c checkpoint (default: beside the model)')
  .option('--model-name <id>', 'the model id clients send (default: the model file name without its extension)')
  .option('--host <host>', 'address to listen on (0.0.0.0 for every interface)', '127.0.0.1')
  .option('--port <port>', 'port to listen on (0 picks a free one; the URL is printed)', integer('--port', 0), 8080)
  .addOption(new Option('--api-key <key>', 'require "Authorization: Bearer KEY" on /v1/* (401 otherwise)').env('WGSERVE_API_KEY'))
  .option('--max-batch <n>', 'sequences per engine step (default 64)', integer('--max-batch', 1))
  .option('--kv-memory <bytes>', 'KV cache memory', integer('--kv-memory', 1), 64 * 1024 * 1024)
  .option('--token-budget <n>', 'tokens per engine step, decodes and prompt chunks (default 512)', integer('--token-budget', 1))
  .option('--max-waiting <n>', 'requests queued for admission at most; beyond, 429 with Retry-After (default 1024)', integer('--max-waiting', 1))
  .option('--drain-timeout <seconds>', 'on SIGTERM, how long running requests may take to finish before they are cancelled', number('--drain-timeout', 0), 30)
  .option('--body-timeout <seconds>', 'a request (headers and body) not received within this long gets 408 and its connection is closed; responses are not limited', number('--body-timeout', 0.001), 30)
  .option('--keep-alive-timeout <seconds>', 'an idle keep-alive connection is closed after this long', number('--keep-alive-timeout', 0.001), 5)
  .option('--constraint-body-limit <bytes>', 'request body limit of POST /v1/constraints (registered constraint sets; the other routes take 1 MiB)', integer('--constraint-body-limit', 1), 256 * 1024 * 1024)
  .option('--constraint-memory <bytes>', 'bytes all registered constraint sets may take together; a set beyond gets 413', integer('--constraint-memory', 1), 1024 * 1024 * 1024)
  .addOption(new Option('--policy <name>', 'scheduling policy: fcfs, edf (earliest SLO deadline first) or slo (goodput: least slack first, rejects hopeless requests)').choices(['fcfs', 'edf', 'slo']).default('fcfs'))
  .option('--cost-model <file>', 'step-time model for edf/slo (from `wgserve profile`); slo without one fits step times online')
  .option('--record-steps <file>', 'append every engine step (batch shape, compute and loop time) as JSONL, for `wgserve profile --from-steps`')
  .option('--slo-class <spec>', 'an SLO class requests select with "slo_class": NAME=ttft:MS,tpot:MS,deadline:MS (any of the three; repeatable)', (v: string, prev: string[] = []) => [...prev, v])
  .option('--disaggregate', 'prefill and decode in separate worker processes, KV shipped between them (docs/disaggregation.md)', false)
  .option('--prefill-workers <n>', 'with --disaggregate: prefill workers to spawn (or, with --nats, to wait for)', integer('--prefill-workers', 1), 1)
  .option('--decode-workers <n>', 'with --disaggregate: decode workers to spawn (or, with --nats, to wait for)', integer('--decode-workers', 1), 1)
  .option('--nats <url>', 'with --disaggregate: find workers started with `wgserve worker --nats URL` (on any host) instead of spawning them')
  .option('--worker-timeout <seconds>', 'with --disaggregate: how long to wait for the workers to come up', number('--worker-timeout', 1), 120)
  .option('--no-warmup', 'skip the warm-up generation that compiles the pipelines before serving (with --disaggregate: in every worker): the first requests compile what they use (and wait for it)')
  .addOption(deviceOption())
  .action(
    async (o: Omit<ServeCliOptions, 'device' | 'headwise' | 'ann'> & HeadPatternCliOptions & AnnCliFlags & { device: string }) => {
      const { serveCli } = await import('./serve.ts');
      await serveCli({ ...o, headwise: headPatternOf(o), ann: annOf(o), device: parseDeviceMode(o.device) });
    },
  );

kvDtypeOption(annOptions(headPatternOptions(program
  .command('worker'))))
  .description('run one disaggregated prefill or decode worker (spawned by `serve --disaggregate`, or started on any host with --nats)')
  .addOption(new Option('--role <role>', 'prefill: computes prompts and ships their KV; decode: takes sequences over and generates').choices(['prefill', 'decode']).makeOptionMandatory())
  .option('--model <file>', 'GGUF file, llama2.c checkpoint or Hugging Face model directory (default: the embedded stories260K); must be the front\'s model')
  .option('--tokenizer <file>', 'tokenizer.bin for a llama2.c checkpoint (default: beside the model)')
  .option('--id <id>', 'worker id (default: role, host name and pid)')
  .option('--adapter <n>', 'use the n-th WebGPU adapter (boxes with several GPUs)', integer('--adapter', 0))
  .option('--nats <url>', 'control plane: register with the front through this NATS server')
  .option('--ipc', 'control plane: the IPC channel of the front that spawned this worker', false)
  .option('--kv-memory <bytes>', 'KV cache memory', integer('--kv-memory', 1), 64 * 1024 * 1024)
  .option('--max-batch <n>', 'sequences per engine step (default 64)', integer('--max-batch', 1))
  .option('--token-budget <n>', 'tokens per engine step (default 512)', integer('--token-budget', 1))
  .option('--data-host <host>', 'decode workers: address the KV listener binds (default 127.0.0.1; 0.0.0.0 with --nats)')
  .option('--data-port <port>', 'decode workers: KV listener port (0 picks a free one)', integer('--data-port', 0), 0)
  .option('--advertise <host>', 'decode workers: the host name prefill workers connect to (default: the bind address, or this host\'s name when binding 0.0.0.0)')
  .option('--transfer-timeout <seconds>', 'a KV transfer without progress this long fails its connection; the decode worker frees what arrived (default 60)', number('--transfer-timeout', 0.001))
  .option('--no-warmup', 'skip the warm-up generation that compiles the pipelines before registering: the first requests compile what they use (and wait for it)')
  .addOption(deviceOption())
  .action(
    async (o: HeadPatternCliOptions & AnnCliFlags & { role: 'prefill' | 'decode'; model?: string; tokenizer?: string; id?: string; adapter?: number; nats?: string; ipc: boolean; kvMemory: number; maxBatch?: number; tokenBudget?: number; dataHost?: string; dataPort: number; advertise?: string; transferTimeout?: number; warmup: boolean; kvDtype: KvDtypeChoice; subgroups: SubgroupMode; device: string }) => {
      const { workerCli } = await import('./worker.ts');
      process.exitCode = await workerCli({ ...o, headwise: headPatternOf(o), ann: annOf(o), device: parseDeviceMode(o.device) });
    },
  );

const bench = program.command('bench').description('benchmarks');
bench
  .command('kernels')
  .description('kernel microbenchmarks on real model shapes (reduced shapes on a software device)')
  .addOption(deviceOption())
  .addOption(new Option('--scale <scale>', 'shapes: full, reduced, or auto (reduced on a software device)').choices(['auto', 'full', 'reduced']).default('auto'))
  .option('--filter <regex>', 'only cases whose "family name" matches')
  .option('--json <file>', 'write the results as JSON')
  .option('--markdown <file>', 'write the results as a markdown table')
  .option('--update-docs', 'replace the table for this device class in docs/benchmarks.md', false)
  .action(async (o: { device: string; scale: 'auto' | 'full' | 'reduced'; filter?: string; json?: string; markdown?: string; updateDocs: boolean }) => {
    const { benchKernels } = await import('./bench.ts');
    await benchKernels({ ...o, device: parseDeviceMode(o.device) });
  });

bench.addCommand(benchStepCommand(deviceOption()));
bench.addCommand(benchAnnCommand(deviceOption()));

const SYNTHETIC_MODELS = ['llama-3.2-1b', 'llama-3-8b', 'qwen2.5-7b', 'stories260k'];
const SYNTHETIC_DTYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0'];
/** A comma-separated list whose items are all in `allowed`. */
const listOf = (name: string, allowed: string[]) => (v: string) => {
  const items = v.split(',').map((s) => s.trim().toLowerCase());
  const bad = items.filter((s) => !allowed.includes(s));
  if (bad.length || items.length === 0) throw new InvalidArgumentError(`${name}: ${bad.join(', ') || 'empty'} not one of ${allowed.join(', ')}`);
  return items;
};
const integerList = (name: string) => (v: string) =>
  v.split(',').map((s) => {
    const n = Number(s.trim());
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be positive integers separated by commas`);
    return n;
  });

program
  .command('calibrate-heads')
  .description('score every KV head by the Retrieval Head copy score on seeded needle/copy prompts (float64 CPU forward) and write a head pattern file (TSV) with a heat-map SVG (docs/headwise.md)')
  .option('--model <file>', 'GGUF file, llama2.c checkpoint or Hugging Face model directory (default: the embedded stories260K)')
  .option('--tokenizer <file>', 'tokenizer.bin for a llama2.c checkpoint (default: beside the model)')
  .requiredOption('--out <file>', 'pattern file to write (a row per layer, a tab-separated score per KV head)')
  .option('--report <file.svg>', 'heat map of the scores (default: --out with .svg)')
  .option('--seed <s>', 'seed of the prompts', integer('--seed', 0), 1)
  .option('--samples <n>', 'prompts', integer('--samples', 1), 8)
  .option('--length <n>', 'tokens per prompt', integer('--length', 8), 256)
  .option('--needle <n>', 'needle tokens (copied once at the end of each prompt)', integer('--needle', 2), 16)
  .action(async (o: { model?: string; tokenizer?: string; out: string; report?: string; seed: number; samples: number; length: number; needle: number }) => {
    const { calibrateHeadsCli } = await import('./calibrate_heads.ts');
    await calibrateHeadsCli(o);
  });

headPatternOptions(program
  .command('profile'))
  .description('time forward passes over a grid of batch shapes and fit the step-time cost model (JSON for the scheduler and simulator; with --head-pattern, of head-wise KV, its layout carried into the JSON)')
  .option('--model <file>', 'GGUF file, llama2.c checkpoint or Hugging Face model directory (default: the embedded stories260K)')
  .option('--tokenizer <file>', 'tokenizer.bin for a llama2.c checkpoint (default: beside the model)')
  .option('--synthetic <model>', `instead of --model: random weights in a real shape (${SYNTHETIC_MODELS.join(', ')})`, listOf('--synthetic', SYNTHETIC_MODELS))
  .option('--dtype <format>', `--synthetic weight format: ${SYNTHETIC_DTYPES.join(', ')}`, listOf('--dtype', SYNTHETIC_DTYPES), ['f16'])
  .addOption(new Option('--scale <scale>', '--synthetic shape: full, reduced (width / 8), or auto (reduced on a software device)').choices(['auto', 'full', 'reduced']).default('auto'))
  .option('--out <file>', 'JSON to write (default: <model name>.cost.json)')
  .option('--kv-memory <bytes>', 'KV cache memory', integer('--kv-memory', 1), 64 * 1024 * 1024)
  .option('--quick', 'a short grid (10 shapes: under a minute for the embedded model on a software device)', false)
  .option('--repeats <n>', 'timed runs per shape, median kept (default 3)', integer('--repeats', 1))
  .addOption(new Option('--clock <clock>', 'step times from GPU timestamps, the wall clock, or auto (timestamps where supported)').choices(['auto', 'gpu', 'wall']).default('auto'))
  .option('--link-bandwidth <bytes/s>', 'KV transfer link between instances, per direction (default 25e9, about PCIe 4.0 x16)', number('--link-bandwidth', 1), 25e9)
  .option('--from-steps <file>', "fit from a live server's recorded steps (serve --record-steps) instead of timing a grid: host work between steps included")
  .addOption(deviceOption())
  .action(async (o: HeadPatternCliOptions & { model?: string; tokenizer?: string; synthetic?: string[]; dtype: string[]; scale: 'auto' | 'full' | 'reduced'; out?: string; kvMemory: number; quick: boolean; repeats?: number; clock: 'auto' | 'gpu' | 'wall'; linkBandwidth: number; device: string; fromSteps?: string }) => {
    if ((o.synthetic?.length ?? 1) !== 1 || o.dtype.length !== 1) throw new InvalidArgumentError('--synthetic and --dtype take one value each here');
    const { profileCli, profileFromSteps } = await import('./profile.ts');
    const options = { ...o, synthetic: o.synthetic?.[0], dtype: o.dtype[0] as WeightFormat, device: parseDeviceMode(o.device), headwise: headPatternOf(o) };
    if (o.fromSteps) await profileFromSteps({ ...options, fromSteps: o.fromSteps });
    else await profileCli(options);
  });

bench
  .command('generate')
  .description('prefill and decode tokens/s of a synthetic model (random weights in real shapes and GGUF formats) at several batch sizes, with the fraction of the memory-bandwidth roofline')
  .requiredOption('--synthetic <models>', `model shape(s), comma-separated: ${SYNTHETIC_MODELS.join(', ')}`, listOf('--synthetic', SYNTHETIC_MODELS))
  .option('--dtype <formats>', `weight format(s), comma-separated: ${SYNTHETIC_DTYPES.join(', ')}`, listOf('--dtype', SYNTHETIC_DTYPES), ['q4_0'])
  .option('--batch <sizes>', 'batch sizes, comma-separated', integerList('--batch'), [1, 8, 32])
  .option('--prompt-tokens <n>', 'prompt tokens per sequence (default 128; 16 with reduced shapes)', integer('--prompt-tokens', 1))
  .option('--decode-tokens <n>', 'decode steps (default 32; 8 with reduced shapes)', integer('--decode-tokens', 1))
  .option('--seed <s>', 'seed of the random weights and prompts', integer('--seed', 0), 1)
  .addOption(new Option('--scale <scale>', 'shapes: full, reduced (width / 8), or auto (reduced on a software device)').choices(['auto', 'full', 'reduced']).default('auto'))
  .addOption(deviceOption())
  .option('--json <file>', 'write the results as JSON')
  .option('--markdown <file>', 'write the results as markdown tables')
  .option('--update-docs', "replace this run's tables in docs/benchmarks.md (the section for this device class)", false)
  .action(
    async (o: {
      synthetic: string[];
      dtype: string[];
      batch: number[];
      promptTokens?: number;
      decodeTokens?: number;
      seed: number;
      scale: 'auto' | 'full' | 'reduced';
      device: string;
      json?: string;
      markdown?: string;
      updateDocs: boolean;
    }) => {
      const { benchGenerate } = await import('./bench_generate.ts');
      await benchGenerate({
        device: parseDeviceMode(o.device),
        models: o.synthetic,
        dtypes: o.dtype as WeightFormat[],
        batches: o.batch,
        scale: o.scale,
        promptTokens: o.promptTokens,
        decodeTokens: o.decodeTokens,
        seed: o.seed,
        json: o.json,
        markdown: o.markdown,
        updateDocs: o.updateDocs,
      });
    },
  );

bench
  .command('constraints')
  .description('constrained decoding: mask + state-update time per step on the GPU beside a CPU pointer trie and a CPU sorted-array search, against batch, set size and vocabulary, and as a share of a decode step')
  .option('--sizes <list>', 'set sizes (sequences), comma-separated', integerList('--sizes'), [1e5, 1e6])
  .option('--vocab <list>', 'vocabulary sizes, comma-separated', integerList('--vocab'), [512, 2048, 32768, 131072])
  .option('--batch <list>', 'batch sizes, comma-separated', integerList('--batch'), [1, 8, 64, 256])
  .option('--length <n>', 'tokens per sequence', integer('--length', 1), 8)
  .option('--pointer-max <n>', 'largest set the CPU pointer trie is built for (1e7 takes many GB of JS heap)', integer('--pointer-max', 1), 1e6)
  .option('--model-batches <list>', "decode steps' batch sizes (default: --batch; those up to 8 on a software device)", integerList('--model-batches'))
  .option('--no-models', 'skip the comparison with decode steps')
  .option('--seed <s>', 'seed of the random sets and batches', integer('--seed', 0), 1)
  .addOption(new Option('--scale <scale>', "the models' shapes: full, reduced (width / 8), or auto (reduced on a software device)").choices(['auto', 'full', 'reduced']).default('auto'))
  .addOption(deviceOption())
  .option('--json <file>', 'write the results as JSON')
  .option('--markdown <file>', 'write the results as markdown tables')
  .option('--update-docs', 'replace the constraints section for this device class in docs/benchmarks.md', false)
  .action(async (o: { sizes: number[]; vocab: number[]; batch: number[]; length: number; pointerMax: number; modelBatches?: number[]; models: boolean; seed: number; scale: 'auto' | 'full' | 'reduced'; device: string; json?: string; markdown?: string; updateDocs: boolean }) => {
    const { benchConstraints } = await import('./bench_constraints.ts');
    const { vocab, batch, ...rest } = o;
    await benchConstraints({ ...rest, vocabs: vocab, batches: batch, device: parseDeviceMode(o.device) });
  });

bench
  .command('headwise')
  .description('head-wise KV memory: bytes per sequence and sequences a KV budget holds against context length, for shares of retrieval heads against the full cache (synthetic Llama-3-8B as MHA, Llama-3-8B, Llama-3.2-1B; no device); with --timing, decode attention time on the device')
  .option('--contexts <list>', 'context lengths, comma-separated', integerList('--contexts'), [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072])
  .option('--fractions <list>', 'retrieval-head fractions per layer, comma-separated (the full cache is always included)', (v: string) => v.split(',').map((s) => number('--fractions', 0, 1)(s.trim())), [0.25, 0.5])
  .option('--sink <n>', 'tokens a streaming head keeps from the start (default 64; --serve: 4)', integer('--sink', 0))
  .option('--recent <n>', 'latest tokens a streaming head keeps (default 256; --serve: 32)', integer('--recent', 1))
  .option('--block-size <n>', 'tokens per KV block', integer('--block-size', 1), 16)
  .option('--kv-memory <bytes>', 'KV cache budget (default 40 GiB; --serve: what holds a quarter of --concurrency full-cache sequences)', integer('--kv-memory', 1))
  .option('--bytes-per-element <n>', 'bytes per stored K/V element (2: f16, 4: f32)', integer('--bytes-per-element', 1), 2)
  .option('--seed <s>', "seed of the synthetic patterns' gates", integer('--seed', 0), 1)
  .option('--json <file>', 'write the results as JSON')
  .option('--markdown <file>', 'write the results as markdown tables')
  .option('--update-docs', 'replace the head-wise section in docs/benchmarks.md (headwise-gpu for a GPU\'s timing)', false)
  .option('--timing', 'also time decode attention alone over mixed heads against the full cache on the device (Llama-3.2-1B, Llama-3-8B; on a GPU also Llama-3-8B as MHA)', false)
  .option('--timing-contexts <list>', 'context lengths of the timing, comma-separated', integerList('--timing-contexts'), [1024, 2048, 4096, 8192, 16384, 32768])
  .option('--batch <n>', 'sequences per decode step in the timing (default 1 on a software device, 8 on a GPU)', integer('--batch', 1))
  .option('--quality', 'instead: greedy-token agreement and logit KL against full attention on --model, for --fractions with --sink/--recent (calibrated and random patterns; bench/headwise_quality.ts)', false)
  .option('--model <file>', '--quality: the model (default: the embedded stories260K)')
  .option('--max-tokens <n>', '--quality: new tokens per greedy continuation', integer('--max-tokens', 1), 400)
  .option('--serve', 'instead: `wgserve serve` (--model) with the full cache, then with a pattern, under the same closed-loop load at one --kv-memory: throughput, sequences at once, KV blocks, preemptions, TTFT/TPOT (bench/headwise_serve.ts)', false)
  .option('--head-pattern <file>', '--serve: the pattern file (default: equal gates, so --retrieval-fraction takes the KV heads in order)')
  .option('--retrieval-fraction <f>', '--serve: this share of each layer\'s KV heads keeps full history (default 0.25 without --gate-threshold)', number('--retrieval-fraction', 0, 1))
  .option('--gate-threshold <t>', '--serve: heads with a gate >= t keep full history', number('--gate-threshold', 0, 1))
  .option('--input-tokens <n>', '--serve: prompt tokens per request', integer('--input-tokens', 1), 256)
  .option('--output-tokens <n>', '--serve: max_tokens per request', integer('--output-tokens', 1), 64)
  .option('--requests <n>', '--serve: requests per configuration', integer('--requests', 1), 32)
  .option('--concurrency <n>', '--serve: closed-loop clients', integer('--concurrency', 1), 16)
  .option('--rounds <n>', '--serve: runs per configuration, alternating between the two servers', integer('--rounds', 1), 2)
  .option('--max-batch <n>', '--serve: serve\'s --max-batch', integer('--max-batch', 1))
  .addOption(deviceOption())
  .action(async (o: Omit<BenchHeadwiseOptions, 'device'> & { device: string }) => {
    const { benchHeadwise } = await import('./bench_headwise.ts');
    await benchHeadwise({ ...o, device: parseDeviceMode(o.device) });
  });

bench
  .command('disagg')
  .description('disaggregated vs colocated serving: KV handover time and bandwidth vs prompt length, and the TPOT of running decodes while long prompts arrive (spawns one prefill and one decode worker)')
  .option('--model <file>', 'model file (default: the embedded stories260K)')
  .option('--prompt-lengths <list>', 'prompt lengths for the handover measurement, comma-separated', integerList('--prompt-lengths'), [16, 64, 256, 1024])
  .option('--repeats <n>', 'requests per prompt length and mode', integer('--repeats', 1), 3)
  .option('--decoders <n>', 'interference: decoding requests', integer('--decoders', 1), 4)
  .option('--decode-tokens <n>', 'interference: tokens each decoder generates', integer('--decode-tokens', 2), 96)
  .option('--long-prompts <n>', 'interference: long prompts arriving', integer('--long-prompts', 1), 4)
  .option('--long-prompt-tokens <n>', 'interference: tokens of each long prompt', integer('--long-prompt-tokens', 1), 768)
  .option('--interval <ms>', 'interference: ms between long prompts', integer('--interval', 0), 250)
  .option('--kv-memory <bytes>', 'KV cache memory of each engine', integer('--kv-memory', 1), 64 * 1024 * 1024)
  .option('--seed <s>', 'seed of the random prompts', integer('--seed', 0), 1)
  .addOption(deviceOption())
  .option('--json <file>', 'write the results as JSON')
  .option('--markdown <file>', 'write the results as markdown tables')
  .option('--plot <file.svg>', 'write the interference and handover plot')
  .option('--update-docs', 'replace the disaggregation section for this device class in docs/benchmarks.md', false)
  .action(
    async (o: Omit<BenchDisaggOptions, 'device'> & { device: string }) => {
      const { benchDisagg } = await import('./bench_disagg.ts');
      await benchDisagg({ ...o, device: parseDeviceMode(o.device) });
    },
  );

/** A factor >= min: a number or a fraction such as 1/64. */
const factor = (name: string, min: number) => (v: string) => {
  const m = /^\s*([0-9.eE+-]+)\s*\/\s*([0-9.eE+-]+)\s*$/.exec(v);
  return number(name, min)(m ? String(Number(m[1]) / Number(m[2])) : v);
};
/** A rate in requests/s: a positive number, or "inf" (every request at once). */
const rate = (name: string) => (v: string) => {
  const n = /^inf(inity)?$/i.test(v.trim()) ? Infinity : Number(v);
  if (!(n > 0) || Number.isNaN(n)) throw new InvalidArgumentError(`${name} must be a number > 0 or "inf"`);
  return n;
};

bench
  .command('serve')
  .description('load generator for an OpenAI-compatible server: streaming /v1/completions at a Poisson rate, a concurrency, or a trace\'s arrivals; TTFT, TPOT, latency and throughput percentiles, JSON and an SVG plot')
  .requiredOption('--url <url>', 'server base URL, e.g. http://127.0.0.1:8080')
  .option('--rate <r>', 'open loop: Poisson arrivals at r requests/s ("inf": all at once)', rate('--rate'))
  .option('--concurrency <c>', 'closed loop: c clients, each sending its next request when the last one ends', integer('--concurrency', 1))
  .option('--rates <list>', 'a sweep, one run per rate (comma-separated): Poisson, or with --trace the trace\'s arrivals rescaled to each mean rate', (v: string) => v.split(',').map((s) => rate('--rates')(s)))
  .option('--trace <file>', 'Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens), or CSV / JSONL with arrival, input and output token columns: request lengths, and the arrivals when no rate or concurrency is given')
  .option('--time-scale <x>', "multiplies the trace's arrival times (0.5 = twice as fast)", factor('--time-scale', 0), 1)
  .option('--token-scale <y>', "multiplies the trace's input and output lengths (e.g. 1/64; at least 1 token, clamped to the context)", factor('--token-scale', 1e-9), 1)
  .option('--input-tokens <n>', 'without a trace: prompt tokens per request (BOS included)', integer('--input-tokens', 1), 32)
  .option('--output-tokens <n>', 'without a trace: max_tokens per request (a request may end earlier at EOS)', integer('--output-tokens', 1), 32)
  .option('--max-context <n>', "the model's context for clamping lengths (default: from GET /v1/models when the server says it)", integer('--max-context', 2))
  .option('--duration <s>', 'stop sending after s seconds', number('--duration', 0), 60)
  .option('--max-requests <n>', 'send at most n requests (per run)', integer('--max-requests', 1), 200)
  .option('--request-timeout <s>', 'abort a request after s seconds', number('--request-timeout', 0.001), 300)
  .option('--warmup <n>', 'unrecorded requests sent one at a time first', integer('--warmup', 0), 1)
  .option('--model <name>', 'model id to ask for (default: the first one GET /v1/models lists)')
  .option('--temperature <t>', 'sampling temperature sent with each request', number('--temperature', 0, 2), 0)
  .option('--seed <s>', 'seed of the arrivals, prompts and sampling', integer('--seed', 0), 1)
  .option('--slo <spec>', 'send this SLO with every request (ttft=MS,tpot=MS,deadline=MS) and report attainment as measured here')
  .option('--json <file>', 'write the report as JSON')
  .option('--plot <file.svg>', 'write an SVG plot: latency against offered rate for a sweep, latency CDFs otherwise')
  .action(
    async (o: {
      url: string;
      rate?: number;
      concurrency?: number;
      rates?: number[];
      trace?: string;
      timeScale: number;
      tokenScale: number;
      inputTokens: number;
      outputTokens: number;
      maxContext?: number;
      duration: number;
      maxRequests: number;
      requestTimeout: number;
      warmup: number;
      model?: string;
      temperature: number;
      seed: number;
      slo?: string;
      json?: string;
      plot?: string;
    }) => {
      const { benchServe } = await import('./bench_serve.ts');
      const { parseSlo } = await import('./simulate.ts');
      const stop = new AbortController();
      const onSigint = () => {
        console.error('interrupted: cancelling requests in flight and reporting what finished');
        stop.abort();
      };
      process.once('SIGINT', onSigint);
      try {
        const { duration, requestTimeout, slo, ...rest } = o;
        await benchServe({ ...rest, slo: slo ? parseSlo(slo) : undefined, durationSeconds: duration, requestTimeoutSeconds: requestTimeout, signal: stop.signal });
      } finally {
        process.off('SIGINT', onSigint);
      }
    },
  );

program
  .command('simulate')
  .description('discrete-event simulation of a serving cluster with the real schedulers and a step-time cost model: SLO attainment, goodput, TTFT/TPOT percentiles; rate sweeps and prefill/decode placement search (docs/simulator.md)')
  .option('--trace <file>', 'Azure LLM trace CSV, or CSV / JSONL with arrival, input and output columns: arrivals and lengths')
  .addOption(new Option('--synthetic <arrivals>', 'synthetic arrivals: poisson, or gamma (with --cv)').choices(['poisson', 'gamma']))
  .option('--rate <r>', 'requests/s for the whole cluster (synthetic; with --trace, the trace rescaled to this mean rate)', number('--rate', 1e-9))
  .option('--rates <list>', 'a sweep over these rates (comma-separated, requests/s)', (v: string) => v.split(',').map((s) => number('--rates', 1e-9)(s.trim())))
  .option('--cv <c>', 'coefficient of variation of Gamma inter-arrival gaps (1 = Poisson; > 1 bursty)', number('--cv', 1e-3), 1)
  .option('--burst <n>', 'synthetic: requests arrive in groups of n at one instant, groups at rate / n (default 1)', integer('--burst', 1))
  .option('--arrival-step <seconds>', 'trace: floor arrivals to multiples of this step in the trace\'s own time (before rate scaling), as a trace recorded in coarse steps', number('--arrival-step', 1e-9))
  .option('--input-len <spec>', 'synthetic prompt lengths: N, A:B (uniform), lognormal:median=M,mean=X[,max=K] (or sigma=S for mean=X), pareto:min=M,alpha=A[,max=K], or a trace file (its lengths; with the same file as --output-len, pairs drawn together)', '1024')
  .option('--output-len <spec>', 'synthetic response lengths: N, A:B, lognormal:..., pareto:... (as --input-len) or a trace file', '128')
  .option('--requests <n>', 'synthetic: requests per run (default 2000); trace: the first n', integer('--requests', 1))
  .option('--rate-scale <x>', 'multiplies the arrival rate (a trace replayed x times faster)', factor('--rate-scale', 1e-9))
  .option('--cost-model <file>', 'step-time model JSON (`wgserve profile`, or an analytical preset) instead of --hardware / --model-shape')
  .option('--hardware <gpu>', 'analytical cost model: h100, a100, rtx4090 or l4', 'h100')
  .option('--model-shape <name>', 'analytical cost model: llama-3-8b, llama-3.2-1b, qwen2.5-7b, llama-3-70b, qwen2.5-72b, ...', 'llama-3-8b')
  .option('--instances <n>', 'colocated instances (each of --tp x --pp GPUs; requests go to the least loaded)', integer('--instances', 1))
  .option('--tp <n>', 'tensor-parallel GPUs per instance (prefill instances with --prefill); default: the cost model\'s own', integer('--tp', 1))
  .option('--pp <n>', 'pipeline stages per instance (prefill instances with --prefill); default: the cost model\'s own', integer('--pp', 1))
  .option('--tp-decode <n>', 'tensor-parallel GPUs per decode instance (default --tp)', integer('--tp-decode', 1))
  .option('--pp-decode <n>', 'pipeline stages per decode instance (default --pp)', integer('--pp-decode', 1))
  .option('--prefill <p>', 'disaggregated: prefill instances (with --decode)', integer('--prefill', 1))
  .option('--decode <d>', 'disaggregated: decode instances (with --prefill)', integer('--decode', 1))
  .option('--policy <list>', 'scheduling policies, comma-separated: fcfs, edf, slo', listOf('--policy', ['fcfs', 'edf', 'slo']), ['fcfs'])
  .option('--slo <spec>', 'default SLO in ms: ttft=500,tpot=50[,deadline=MS]')
  .option('--sweep', 'find the highest rate per GPU with >= --target attainment (bisection), then run a grid of rates (or --rates)', false)
  .option('--plan', 'search layouts of at most --gpus GPUs (colocated or prefill/decode, tensor and pipeline degrees, counts), report the best by goodput per GPU', false)
  .option('--gpus <g>', 'GPUs for --plan', integer('--gpus', 1))
  .option('--gpus-per-node <n>', '--plan: GPUs per node; instances stay in a node, KV moves over NVLink/PCIe inside it and the network across (default: one node, KV over the cost model\'s link)', integer('--gpus-per-node', 1))
  .option('--target <fraction>', 'attainment a rate must reach in --sweep / --plan', number('--target', 0.01, 1), 0.9)
  .option('--token-budget <n>', 'tokens per step per instance', integer('--token-budget', 1), 2048)
  .option('--max-batch <n>', 'sequences per step per instance', integer('--max-batch', 1), 128)
  .option('--block-size <n>', 'tokens per KV block', integer('--block-size', 1), 16)
  .option('--retrieval-fraction <f>', 'head-wise KV (docs/headwise.md): this share of each layer\'s KV heads keeps full history, the others --sink + --recent tokens', number('--retrieval-fraction', 0, 1))
  .option('--sink <n>', 'with --retrieval-fraction: first tokens a streaming head keeps (default 64)', integer('--sink', 0))
  .option('--recent <n>', 'with --retrieval-fraction: latest tokens a streaming head keeps (default 256)', integer('--recent', 1))
  .option('--kv-heads <n>', 'with --retrieval-fraction: KV heads per layer (default: --model-shape\'s; needed with --cost-model)', integer('--kv-heads', 1))
  .option('--max-tokens <n>', 'max_tokens the scheduler is told (at least each response\'s real length)', integer('--max-tokens', 1), 1024)
  .option('--max-waiting <n>', 'requests waiting per instance at most; beyond, refused (an SLO miss)', integer('--max-waiting', 1), 1024)
  .option('--seed <s>', 'seed of synthetic arrivals and lengths', integer('--seed', 0), 1)
  .option('--json <file>', 'write every run as JSON (one object per policy and rate)')
  .option('--plot <file.svg>', 'write an SVG plot of attainment against rate, one line per policy or placement')
  .option('--requests-out <file.jsonl>', 'single runs: one JSON line per request and policy (outcome, latencies, why it missed, the rejection estimate)')
  .action(async (o: SimulateCliOptions) => {
    const { simulateCli } = await import('./simulate.ts');
    await simulateCli(o);
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  console.error(`wgserve: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
}
