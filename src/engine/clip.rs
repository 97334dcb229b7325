//! The CLIP text encoder (transformers' `CLIPTextModel`), built from its
//! config so that both OpenAI CLIP (SD 1.x, quick_gelu) and OpenCLIP (SD 2.x,
//! gelu) encoders load. SD 1.x/2.x condition on the last hidden state after
//! the final layer norm; SDXL on the penultimate hidden state and the pooled
//! (end-of-text) output through `text_projection` (`CLIPTextModelWithProjection`).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use super::blocks::{linear, linear_no_bias, Linear};

use super::config::{ClipActivation, ClipSpec};

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, spec: &ClipSpec) -> Result<Self> {
        let d = spec.hidden_size;
        Ok(Self {
            q: linear(d, d, vb.pp("q_proj"))?,
            k: linear(d, d, vb.pp("k_proj"))?,
            v: linear(d, d, vb.pp("v_proj"))?,
            out: linear(d, d, vb.pp("out_proj"))?,
            heads: spec.num_attention_heads,
            head_dim: d / spec.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let split = |x: Tensor| {
            x.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = split((self.q.forward(xs)? * scale)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let weights = q.matmul(&k.t()?)?.broadcast_add(causal_mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&weights)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out.forward(&out)
    }
}

struct Layer {
    norm1: LayerNorm,
    attention: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: ClipActivation,
}

impl Layer {
    fn new(vb: VarBuilder, spec: &ClipSpec) -> Result<Self> {
        let d = spec.hidden_size;
        Ok(Self {
            norm1: layer_norm(d, spec.layer_norm_eps, vb.pp("layer_norm1"))?,
            attention: Attention::new(vb.pp("self_attn"), spec)?,
            norm2: layer_norm(d, spec.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(d, spec.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(spec.intermediate_size, d, vb.pp("mlp.fc2"))?,
            activation: spec.activation,
        })
    }

    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let h = self
            .attention
            .forward(&self.norm1.forward(xs)?, causal_mask)?;
        let xs = (xs + h)?;
        let h = self.fc1.forward(&self.norm2.forward(&xs)?)?;
        let h = match self.activation {
            ClipActivation::QuickGelu => (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?,
            ClipActivation::Gelu => h.gelu_erf()?,
        };
        xs + self.fc2.forward(&h)?
    }
}

pub struct ClipTextEncoder {
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    projection: Option<Linear>,
    dtype: DType,
}

/// Everything the pipelines read from one text encoder call.
pub struct ClipOutput {
    /// After the final layer norm [batch, tokens, hidden].
    pub last: Tensor,
    /// The input to the last layer (`hidden_states[-2]`), no final norm.
    pub penultimate: Tensor,
    /// The final-normed state at the first end-of-text token through
    /// `text_projection` [batch, projection_dim]; None without a projection.
    pub pooled: Option<Tensor>,
}

impl ClipTextEncoder {
    /// `vb` is the text encoder's weights. Tensors live under `text_model.`
    /// in transformers 4 checkpoints and at the root in transformers 5 ones.
    pub fn new(vb: VarBuilder, spec: &ClipSpec) -> Result<Self> {
        let projection = match spec.projection_dim {
            Some(dim) if vb.contains_tensor("text_projection.weight") => Some(linear_no_bias(
                spec.hidden_size,
                dim,
                vb.pp("text_projection"),
            )?),
            _ => None,
        };
        let vb = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let emb = vb.pp("embeddings");
        let token_embedding =
            embedding(spec.vocab_size, spec.hidden_size, emb.pp("token_embedding"))?;
        let position_embedding = emb.get(
            (spec.max_position_embeddings, spec.hidden_size),
            "position_embedding.weight",
        )?;
        let layers = (0..spec.num_hidden_layers)
            .map(|i| Layer::new(vb.pp(format!("encoder.layers.{i}")), spec))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = layer_norm(
            spec.hidden_size,
            spec.layer_norm_eps,
            vb.pp("final_layer_norm"),
        )?;
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_norm,
            projection,
            dtype: vb.dtype(),
        })
    }

    pub fn has_projection(&self) -> bool {
        self.projection.is_some()
    }

    /// `ids`: u32 [batch, tokens] -> [batch, tokens, hidden], final-normed.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (xs, _) = self.run_layers(ids)?;
        self.final_norm.forward(&xs)
    }

    /// One call giving the last, penultimate and pooled outputs. `eos_id`
    /// marks where the pooled output is read (its first occurrence, as
    /// transformers' argmax over ids finds it).
    pub fn forward_all(&self, ids: &Tensor, eos_id: u32) -> Result<ClipOutput> {
        let (xs, penultimate) = self.run_layers(ids)?;
        let last = self.final_norm.forward(&xs)?;
        let pooled = match &self.projection {
            Some(projection) => {
                let rows = ids.to_vec2::<u32>()?;
                let picked = rows
                    .iter()
                    .enumerate()
                    .map(|(b, row)| {
                        let at = row
                            .iter()
                            .position(|&id| id == eos_id)
                            .unwrap_or(row.len() - 1);
                        last.get(b)?.get(at)?.unsqueeze(0)
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(projection.forward(&Tensor::cat(&picked, 0)?)?)
            }
            None => None,
        };
        Ok(ClipOutput {
            last,
            penultimate,
            pooled,
        })
    }

    /// The output of the last layer and its input.
    fn run_layers(&self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, t) = ids.dims2()?;
        let positions = self.position_embedding.narrow(0, 0, t)?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&positions)?;
        let mask = causal_mask(t, self.dtype, ids.device())?;
        let mut penultimate = xs.clone();
        for layer in &self.layers {
            penultimate = xs.clone();
            xs = layer.forward(&xs, &mask)?;
        }
        Ok((xs, penultimate))
    }
}

fn causal_mask(t: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, t), device)?
        .to_dtype(dtype)?
        .unsqueeze(0)?
        .unsqueeze(0)
}
