/**
 * Packs a kernel's uniform parameters in declaration order. Kernels keep their uniforms to 4-byte
 * scalars (u32, i32, f32), so WGSL's layout is simply consecutive words; the struct is padded to 16.
 */
export class Params {
  private readonly words: number[] = [];
  private readonly kinds: ('u32' | 'i32' | 'f32')[] = [];

  u32(value: number): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`u32 param out of range: ${value}`);
    return this.push('u32', value);
  }

  i32(value: number): this {
    if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) throw new RangeError(`i32 param out of range: ${value}`);
    return this.push('i32', value);
  }

  f32(value: number): this {
    return this.push('f32', value);
  }

  bytes(): Uint8Array {
    const out = new ArrayBuffer(Math.max(16, Math.ceil(this.words.length / 4) * 16));
    const view = new DataView(out);
    this.words.forEach((w, i) => {
      const kind = this.kinds[i];
      if (kind === 'f32') view.setFloat32(i * 4, w, true);
      else if (kind === 'i32') view.setInt32(i * 4, w, true);
      else view.setUint32(i * 4, w, true);
    });
    return new Uint8Array(out);
  }

  private push(kind: 'u32' | 'i32' | 'f32', value: number): this {
    this.words.push(value);
    this.kinds.push(kind);
    return this;
  }
}
