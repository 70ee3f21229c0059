// Activation functions shared by the elementwise kernels and the matmul epilogue (so a fused
// SwiGLU gives bit for bit what the separate silu_mul dispatch gives).

// silu(g) = g * sigmoid(g), with exp taken of -|g| only: it never overflows, and no division by a
// huge or infinite denominator happens (WGSL bounds division only for |divisor| < 2^126), so
// g = +-90 or beyond give g and -0-ish respectively instead of NaN.
fn silu4(g: vec4<f32>) -> vec4<f32> {
  let e = exp(-abs(g));       // (0, 1]
  let r = 1.0 / (1.0 + e);    // sigmoid(|g|) in [0.5, 1)
  return g * select(e * r, r, g >= vec4<f32>(0.0));
}

fn silu1(g: f32) -> f32 {
  let e = exp(-abs(g));
  let r = 1.0 / (1.0 + e);
  return g * select(e * r, r, g >= 0.0);
}
