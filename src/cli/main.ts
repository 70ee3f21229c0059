import { Command, Option } from 'commander';
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
