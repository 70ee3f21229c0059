import { Command, InvalidArgumentError, Option } from 'commander';
import { parseDeviceMode } from '../gpu/adapter.ts';

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
  .option('--model <file>', 'GGUF file or llama2.c checkpoint (default: the embedded stories260K)')
  .option('--tokenizer <file>', 'tokenizer.bin for a llama2.c checkpoint (default: beside the model)')
  .requiredOption('--text <text>', 'text to tokenize')
  .option('--no-special', 'do not add BOS/EOS')
  .option('--parse-special', 'turn control-token text such as <|im_start|> into ids', false)
  .action(async (o: { model?: string; tokenizer?: string; text: string; special: boolean; parseSpecial: boolean }) => {
    const { openTokenizer } = await import('../model/source.ts');
    const { DEFAULT_MODEL } = await import('../model/default_model.ts');
    const tokenizer = await openTokenizer(o.model ?? DEFAULT_MODEL, { tokenizer: o.tokenizer });
    console.log(JSON.stringify(tokenizer.encode(o.text, { addSpecial: o.special, parseSpecial: o.parseSpecial })));
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

program
  .command('generate')
  .description('generate text from a prompt on the GPU: the continuation goes to stdout, load time and speeds to stderr')
  .option('--model <file>', 'GGUF file or llama2.c checkpoint (default: the embedded stories260K)')
  .option('--tokenizer <file>', 'tokenizer.bin for a llama2.c checkpoint (default: beside the model)')
  .requiredOption('--prompt <text>', 'prompt')
  .option('--max-tokens <n>', 'new tokens at most', integer('--max-tokens', 0), 128)
  .option('--temperature <t>', 'sampling temperature; 0 = greedy', number('--temperature', 0), 0.8)
  .option('--top-k <k>', 'keep the k most likely tokens; 0 = off', integer('--top-k', 0), 40)
  .option('--top-p <p>', 'keep the smallest set of tokens with this probability mass; 1 = off', number('--top-p', 0, 1), 0.95)
  .option('--seed <s>', 'random seed (same seed, same output); default: random', integer('--seed', 0))
  .option('--stop <text...>', 'stop strings (not printed)')
  .option('--kv-memory <bytes>', 'KV cache memory', integer('--kv-memory', 1), 64 * 1024 * 1024)
  .addOption(deviceOption())
  .action(async (o: { model?: string; tokenizer?: string; prompt: string; maxTokens: number; temperature: number; topK: number; topP: number; seed?: number; stop?: string[]; kvMemory: number; device: string }) => {
    const { generateCli } = await import('./generate.ts');
    await generateCli({
      model: o.model,
      tokenizer: o.tokenizer,
      prompt: o.prompt,
      device: parseDeviceMode(o.device),
      kvMemory: o.kvMemory,
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

try {
  await program.parseAsync(process.argv);
} catch (err) {
  console.error(`wgserve: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
}
