import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ModelConfig } from './config.ts';
import { checkTensorShapes, checkVocabulary, configFromGgufMetadata, ggufConfigFields } from './config.ts';
import { ModelFileError, checkGgufTokenizer, readGguf, readTensorBytes } from './gguf.ts';
import { openHfModel } from './hf.ts';
import { LLAMA2C_FIELDS, openLlama2c } from './llama2c.ts';
import { tokenizerFromHfDir } from './tokenizer/hf.ts';
import { type Tokenizer, tokenizerFromGgufMetadata, tokenizerFromLlama2c } from './tokenizer/index.ts';

export type TensorTypeName = 'F32' | 'F16' | 'BF16' | 'Q8_0' | 'Q4_0';

/** One weight tensor as stored in a model file, under llama.cpp's GGUF tensor name. */
export interface TensorSource {
  name: string;
  typeName: TensorTypeName;
  /** dims[0] is contiguous: a matrix of n rows of k is [k, n] */
  dims: number[];
  bytes: number;
  read(): Uint8Array;
}

/** A model file opened and checked: shape, tensors (read lazily), tokenizer, chat template. */
export interface ModelSource {
  path: string;
  format: 'gguf' | 'llama2c' | 'hf' | 'synthetic';
  config: ModelConfig;
  tensors: Map<string, TensorSource>;
  tokenizer: Tokenizer;
  chatTemplate?: string;
}

/**
 * Opens a GGUF file, a llama2.c checkpoint (with its tokenizer.bin), or a Hugging Face model
 * directory (config.json, *.safetensors, tokenizer.json), and checks it whole before anything
 * reads a weight: the file's structure (each format's reader), the config, every tensor's shape
 * against the config, and the tokenizer against the vocabulary. A file that disagrees with itself
 * is refused with one ModelFileError line naming the file and the field.
 */
export async function openModel(path: string, options: { tokenizer?: string } = {}): Promise<ModelSource> {
  if (!existsSync(path)) throw new ModelFileError(`${path}: model file not found`);
  if (statSync(path).isDirectory()) return openHfModel(path);
  if (path.endsWith('.bin')) {
    const tokenizerPath = options.tokenizer ?? findLlama2cTokenizer(path);
    const { config, tensors } = openLlama2c(path);
    checkTensorShapes(path, config, tensors, LLAMA2C_FIELDS);
    const tokenizer = tokenizerFromLlama2c(tokenizerPath, config.vocabSize);
    checkVocabulary(tokenizerPath, config, tokenizer.vocab, LLAMA2C_FIELDS);
    return { path, format: 'llama2c', config, tensors, tokenizer };
  }
  const g = await readGguf(path);
  checkGgufTokenizer(g.metadata, path);
  const config = configFromGgufMetadata(g.metadata, path);
  const fields = ggufConfigFields(g.metadata);
  checkTensorShapes(path, config, g.tensors, fields);
  const tokenizer = tokenizerFromGgufMetadata(g.metadata, path);
  checkVocabulary(path, config, tokenizer.vocab, fields);
  const tensors = new Map<string, TensorSource>();
  for (const t of g.tensors.values()) {
    tensors.set(t.name, { name: t.name, typeName: t.typeName as TensorTypeName, dims: t.dims, bytes: t.bytes, read: () => readTensorBytes(g, t) });
  }
  const template = g.metadata['tokenizer.chat_template'];
  return {
    path,
    format: 'gguf',
    config,
    tensors,
    tokenizer,
    chatTemplate: typeof template === 'string' ? template : undefined,
  };
}

/** Only the tokenizer of a model file (also works for vocabulary-only GGUF files). */
export async function openTokenizer(path: string, options: { tokenizer?: string } = {}): Promise<Tokenizer> {
  if (!existsSync(path)) throw new ModelFileError(`${path}: model file not found`);
  if (statSync(path).isDirectory()) return tokenizerFromHfDir(path);
  if (path.endsWith('.bin')) return tokenizerFromLlama2c(options.tokenizer ?? findLlama2cTokenizer(path), openLlama2c(path).config.vocabSize);
  const { metadata } = await readGguf(path);
  checkGgufTokenizer(metadata, path);
  return tokenizerFromGgufMetadata(metadata, path);
}

function findLlama2cTokenizer(modelPath: string): string {
  const dir = dirname(modelPath);
  for (const name of ['tokenizer.bin', 'tok512.bin']) {
    const p = join(dir, name);
    if (existsSync(p)) return p;
  }
  throw new ModelFileError(`${modelPath}: llama2.c checkpoint without a tokenizer: put tokenizer.bin beside it or pass --tokenizer FILE`);
}
