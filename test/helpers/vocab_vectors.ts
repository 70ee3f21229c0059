import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../src/gpu/paths.ts';

/** llama.cpp's tokenizer test vectors: `.inp` strings separated by a marker line, `.out` ids per line. */
export const VOCAB_DIR = join(repoRoot, '..', 'shared', 'models', 'llama.cpp-vocab');

export function loadVectors(name: string): { text: string; ids: number[] }[] {
  const inp = readFileSync(join(VOCAB_DIR, `${name}.inp`), 'utf8');
  const out = readFileSync(join(VOCAB_DIR, `${name}.out`), 'utf8');
  const texts = inp.split('\n__ggml_vocab_test__\n');
  texts[texts.length - 1] = texts[texts.length - 1].replace(/\n__ggml_vocab_test__\n?$/, '');
  const idLines = out.split('\n');
  return texts.map((text, i) => ({
    text,
    ids: idLines[i].trim() === '' ? [] : idLines[i].trim().split(/\s+/).map(Number),
  }));
}
