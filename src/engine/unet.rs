//! The conditional UNet (diffusers' `UNet2DConditionModel`) for SD 1.x/2.x,
//! written on candle-nn so that every config field is honoured and the
//! arithmetic follows diffusers exactly (exact-erf GEGLU, attention upcast,
//! per-block heads and transformer depths, odd latent sizes).

use std::sync::Mutex;

use candle_core::{Module, Result, Tensor, TensorId, D};
use candle_nn::VarBuilder;

use super::blocks::{
    attention, bf16_products, group_norm, layer_norm, linear, linear_no_bias, AttentionMode,
    Conv1x1, GroupNorm, LayerNorm, Linear, ResnetBlock,
};
use super::config::UnetSpec;
use super::conv::Conv2d;
use super::cpu::ops;
use super::cuda;
use super::profile::section;

/// Sinusoidal features of each value (diffusers' `get_timestep_embedding`):
/// [values.len(), dim].
fn sinusoidal_features(
    values: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(10000f32.ln()) * i as f32 / (half as f32 - shift as f32)).exp())
        .collect();
    let mut out = Vec::with_capacity(values.len() * dim);
    for &t in values {
        let args = freqs.iter().map(|f| t * f);
        let sin = args.clone().map(f32::sin);
        let cos = args.map(f32::cos);
        if flip_sin_to_cos {
            out.extend(cos.chain(sin));
        } else {
            out.extend(sin.chain(cos));
        }
    }
    Tensor::from_vec(out, (values.len(), half * 2), dev)
}

/// SDXL's added conditioning for one UNet call, one row per batch entry.
#[derive(Clone)]
pub struct AddedConditioning {
    /// Pooled, projected text embedding [batch, pooled_dim].
    pub text_embeds: Tensor,
    /// Original size, crop top-left and target size, 6 per batch row.
    pub time_ids: Vec<f32>,
}

impl AddedConditioning {
    /// The conditioning diffusers' SDXL img2img gives an image of this size:
    /// original size = target size, crop top-left (0, 0), one row per row of
    /// `text_embeds`.
    pub fn for_size(text_embeds: Tensor, width: u32, height: u32) -> Result<Self> {
        let (h, w) = (height as f32, width as f32);
        let rows = text_embeds.dim(0)?;
        Ok(Self {
            text_embeds,
            time_ids: [h, w, 0.0, 0.0, h, w].repeat(rows),
        })
    }
}

/// `add_embedding`: pooled text and time-id features to the timestep width.
struct AddedEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    time_embed_dim: usize,
}

struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    /// The width of its input and output.
    dim: usize,
    heads: usize,
    mode: AttentionMode,
    /// Cross-attention's K and V for the last context seen, by the context
    /// tensor's id. A generation passes the same context tensor at every
    /// step, so they are projected once per generation rather than once per
    /// step (diffusers redoes them): SDXL's 70 cross-attentions project
    /// 2 x 77 tokens of 2048 to 1280, about 100 GFLOP per UNet call.
    context_kv: Mutex<Option<ContextKv>>,
}

/// One context's projections, kept by [`Attention::context_kv`].
#[derive(Clone)]
struct ContextKv {
    id: TensorId,
    k: Tensor,
    v: Tensor,
    /// Runs of the context's samples, whether each run's are all zeros.
    runs: Vec<(bool, std::ops::Range<usize>)>,
    /// What the layer gives a sample whose context is all zeros (its
    /// output bias, [1, 1, dim]), when the context has one.
    zero_out: Option<Tensor>,
}

/// The runs of equal flags in `flags`: (flag, indices).
fn runs_of(flags: &[bool]) -> Vec<(bool, std::ops::Range<usize>)> {
    let mut runs: Vec<(bool, std::ops::Range<usize>)> = Vec::new();
    for (i, &flag) in flags.iter().enumerate() {
        match runs.last_mut() {
            Some((f, range)) if *f == flag => range.end = i + 1,
            _ => runs.push((flag, i..i + 1)),
        }
    }
    runs
}

impl Attention {
    fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        upcast: bool,
    ) -> Result<Self> {
        Ok(Self {
            to_q: linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out.0"))?,
            dim,
            heads,
            mode: AttentionMode::new(upcast),
            context_kv: Mutex::new(None),
        })
    }

    /// The projections of `context`, made or from the last call's.
    fn context_kv(&self, context: &Tensor) -> Result<ContextKv> {
        // A panic elsewhere while this was held leaves a whole entry or
        // None: either is safe to use.
        let mut cached = self.context_kv.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kv) = &*cached {
            if kv.id == context.id() {
                return Ok(kv.clone());
            }
        }
        let zero: Vec<bool> = context
            .abs()?
            .flatten_from(1)?
            .max(1)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .map(|&m| m == 0.0)
            .collect();
        let zero_out = if zero.contains(&true) {
            let zeros = Tensor::zeros((1, 1, self.dim), context.dtype(), context.device())?;
            Some(self.to_out.forward(&zeros)?)
        } else {
            None
        };
        let kv = ContextKv {
            id: context.id(),
            k: self.to_k.forward(context)?,
            v: self.to_v.forward(context)?,
            runs: runs_of(&zero),
            zero_out,
        };
        *cached = Some(kv.clone());
        Ok(kv)
    }

    /// Attention over `xs` (to `context` if given, else to itself), plus
    /// `residual`.
    fn forward_add(
        &self,
        xs: &Tensor,
        context: Option<&Tensor>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let Some(context) = context else {
            let q = self.to_q.forward(xs)?;
            let (k, v) = (self.to_k.forward(xs)?, self.to_v.forward(xs)?);
            let out = attention(&q, &k, &v, self.heads, self.mode)?;
            return self.to_out.forward_add(&out, residual);
        };
        let kv = self.context_kv(context)?;
        let to_context = |samples: &std::ops::Range<usize>| -> Result<Tensor> {
            let (at, n) = (samples.start, samples.len());
            let q = self.to_q.forward(&xs.narrow(0, at, n)?)?;
            let (k, v) = (kv.k.narrow(0, at, n)?, kv.v.narrow(0, at, n)?);
            let out = attention(&q, &k, &v, self.heads, self.mode)?;
            self.to_out.forward_add(&out, &residual.narrow(0, at, n)?)
        };
        if let [(false, all)] = &kv.runs[..] {
            return to_context(all);
        }
        // A sample whose context is all zeros (SDXL's for an empty negative
        // prompt) has K = V = 0, the projections having no bias: its
        // attention is 0 whatever its queries, and the layer gives its
        // output bias. Only the other samples are computed.
        let pieces = kv
            .runs
            .iter()
            .map(|(zero, samples)| match (zero, &kv.zero_out) {
                (true, Some(zero_out)) => residual
                    .narrow(0, samples.start, samples.len())?
                    .broadcast_add(zero_out),
                _ => to_context(samples),
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&pieces, 0)
    }
}

/// The feed-forward's first layer and gate (diffusers' `GEGLU`): `a ·
/// gelu(b)` for `[a | b]`, the halves of a linear layer's output, with the
/// exact (erf) GELU as PyTorch's `F.gelu`. On the CPU (bf16 products, or
/// f32 ones in panels) the product gates its tiles as it stores them, so
/// the layer's output, twice the gated one, is never written and read back
/// (SD 1.5 at 256 px: 17 ms of a 470 ms bf16 step went to that pass).
struct Geglu {
    proj: Linear,
    /// Whether `proj` stores the gated values itself.
    gated_in_product: bool,
}

impl Geglu {
    fn new(vb: VarBuilder, dim: usize, inner: usize) -> Result<Self> {
        let layer = candle_nn::linear(dim, 2 * inner, vb)?;
        let (weight, bias) = (layer.weight(), layer.bias());
        let bf16 = bf16_products();
        let gated_here = ops::applies(weight) && ops::LinearWeight::can_gate(bf16);
        if let Some(bias) = bias.filter(|_| gated_here && inner.is_multiple_of(16)) {
            let (weight, bias) = ops::LinearWeight::gated(weight, bias, bf16)?;
            let proj = Linear::Cpu {
                weight,
                bias: Some(bias),
            };
            return Ok(Self {
                proj,
                gated_in_product: true,
            });
        }
        Ok(Self {
            proj: Linear::new(weight.clone(), bias.cloned())?,
            gated_in_product: false,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(xs)?;
        if self.gated_in_product {
            Ok(h)
        } else if ops::applies(&h) {
            ops::geglu(&h)
        } else if cuda::applies(&h) {
            cuda::geglu(&h)
        } else {
            let parts = h.chunk(2, D::Minus1)?;
            &parts[0] * parts[1].gelu_erf()?
        }
    }
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Geglu,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        upcast: bool,
    ) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, upcast)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, upcast)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_in: Geglu::new(vb.pp("ff.net.0.proj"), dim, inner)?,
            ff_out: linear(inner, dim, vb.pp("ff.net.2"))?,
        })
    }

    /// `xs` may hold fewer samples than `context` (a sample that every
    /// conditioning shares, [`UNet::forward`]): self-attention runs on them
    /// as they are, and they are copied out to the context's batch before
    /// the cross-attention, where the conditionings first differ.
    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let dev = xs.device();
        let xs = section("self-attention", dev, || {
            self.attn1.forward_add(&self.norm1.forward(xs)?, None, xs)
        })?;
        let xs = per_conditioning(&xs, context.dim(0)?)?;
        let xs = section("cross-attention", dev, || {
            self.attn2
                .forward_add(&self.norm2.forward(&xs)?, Some(context), &xs)
        })?;
        section("feed-forward (GEGLU)", dev, || {
            let h = self.ff_in.forward(&self.norm3.forward(&xs)?)?;
            self.ff_out.forward_add(&h, &xs)
        })
    }
}

/// diffusers' `Transformer2DModel`: norm, project in, transformer blocks,
/// project out, residual.
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
}

impl SpatialTransformer {
    fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        spec: &Spec,
    ) -> Result<Self> {
        // SD 1.x stores the projections as 1x1 convolutions: the same
        // product, applied here to the pixels as tokens.
        let proj = |name: &str| -> Result<Linear> {
            if spec.linear_projection {
                linear(channels, channels, vb.pp(name))
            } else {
                Ok(Conv1x1::new(vb.pp(name), channels, channels)?.into_linear())
            }
        };
        Ok(Self {
            norm: group_norm(spec.groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: proj("proj_in")?,
            blocks: (0..depth)
                .map(|i| {
                    TransformerBlock::new(
                        vb.pp(format!("transformer_blocks.{i}")),
                        channels,
                        spec.context_dim,
                        heads,
                        spec.upcast,
                    )
                })
                .collect::<Result<_>>()?,
            proj_out: proj("proj_out")?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let dev = xs.device();
        let x = section("group norm (transformer)", dev, || self.norm.forward(xs))?;
        let mut x = section("transformer proj in/out", dev, || {
            self.proj_in.forward_from_map(&x)
        })?;
        for block in &self.blocks {
            x = block.forward(&x, context)?;
        }
        let xs = per_conditioning(xs, x.dim(0)?)?;
        section("transformer proj in/out", dev, || {
            self.proj_out.forward_to_map_add(&x, &xs)
        })
    }
}

/// `xs` copied out to `batch` samples, `cat([xs] * (batch / n))` for its
/// `n` (the layout of a guided call's input), or `xs` itself when it
/// already has `batch`.
fn per_conditioning(xs: &Tensor, batch: usize) -> Result<Tensor> {
    let n = xs.dim(0)?;
    if n == batch {
        return Ok(xs.clone());
    }
    let mut copies = vec![1; xs.rank()];
    copies[0] = batch / n;
    xs.repeat(copies)
}

/// Settings every block shares.
struct Spec {
    groups: usize,
    eps: f64,
    context_dim: usize,
    linear_projection: bool,
    upcast: bool,
}

struct Block {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    /// Downsampling (stride-2 conv) or upsampling (nearest x2, then conv).
    resample: Option<Conv2d>,
}

pub struct UNet {
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    added: Option<AddedEmbedding>,
    down: Vec<Block>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: SpatialTransformer,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    base_channels: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    center_input: bool,
}

impl UNet {
    pub fn new(vb: VarBuilder, unet: &UnetSpec) -> Result<Self> {
        let cfg = &unet.config;
        let spec = Spec {
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            context_dim: cfg.cross_attention_dim,
            linear_projection: cfg.use_linear_projection,
            upcast: unet.upcast_attention,
        };
        let ch: Vec<usize> = cfg.blocks.iter().map(|b| b.out_channels).collect();
        let n = ch.len();
        let temb = ch[0] * 4;
        let layers = cfg.layers_per_block;

        let down = (0..n)
            .map(|i| {
                let vb = vb.pp(format!("down_blocks.{i}"));
                let block = &cfg.blocks[i];
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                let resnets = (0..layers)
                    .map(|j| {
                        ResnetBlock::new(
                            vb.pp(format!("resnets.{j}")),
                            if j == 0 { cin } else { ch[i] },
                            ch[i],
                            Some(temb),
                            spec.groups,
                            spec.eps,
                            1.0,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let attentions = match block.use_cross_attn {
                    Some(depth) => (0..layers)
                        .map(|j| {
                            SpatialTransformer::new(
                                vb.pp(format!("attentions.{j}")),
                                ch[i],
                                block.attention_head_dim,
                                depth,
                                &spec,
                            )
                        })
                        .collect::<Result<Vec<_>>>()?,
                    None => vec![],
                };
                let resample = (i + 1 < n)
                    .then(|| {
                        Conv2d::new(
                            vb.pp("downsamplers.0.conv"),
                            ch[i],
                            ch[i],
                            3,
                            2,
                            cfg.downsample_padding,
                        )
                    })
                    .transpose()?;
                Ok(Block {
                    resnets,
                    attentions,
                    resample,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        let last = &cfg.blocks[n - 1];
        let mid_vb = vb.pp("mid_block");
        let mid_scale = cfg.mid_block_scale_factor;
        let mid_resnets = [
            ResnetBlock::new(
                mid_vb.pp("resnets.0"),
                ch[n - 1],
                ch[n - 1],
                Some(temb),
                spec.groups,
                spec.eps,
                mid_scale,
            )?,
            ResnetBlock::new(
                mid_vb.pp("resnets.1"),
                ch[n - 1],
                ch[n - 1],
                Some(temb),
                spec.groups,
                spec.eps,
                mid_scale,
            )?,
        ];
        let mid_attention = SpatialTransformer::new(
            mid_vb.pp("attentions.0"),
            ch[n - 1],
            last.attention_head_dim,
            last.use_cross_attn.unwrap_or(1),
            &spec,
        )?;

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let up = (0..n)
            .map(|i| {
                let vb = vb.pp(format!("up_blocks.{i}"));
                let block = &cfg.blocks[n - 1 - i];
                let prev_out = if i == 0 { rev[0] } else { rev[i - 1] };
                let out = rev[i];
                let input = rev[(i + 1).min(n - 1)];
                let resnets = (0..=layers)
                    .map(|j| {
                        let skip = if j == layers { input } else { out };
                        let cin = if j == 0 { prev_out } else { out };
                        ResnetBlock::new(
                            vb.pp(format!("resnets.{j}")),
                            cin + skip,
                            out,
                            Some(temb),
                            spec.groups,
                            spec.eps,
                            1.0,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let attentions = match block.use_cross_attn {
                    Some(depth) => (0..=layers)
                        .map(|j| {
                            SpatialTransformer::new(
                                vb.pp(format!("attentions.{j}")),
                                out,
                                block.attention_head_dim,
                                depth,
                                &spec,
                            )
                        })
                        .collect::<Result<Vec<_>>>()?,
                    None => vec![],
                };
                let resample = (i + 1 < n)
                    .then(|| Conv2d::new_upsampling(vb.pp("upsamplers.0.conv"), out, out))
                    .transpose()?;
                Ok(Block {
                    resnets,
                    attentions,
                    resample,
                })
            })
            .collect::<Result<Vec<_>>>()?;

        Ok(Self {
            conv_in: Conv2d::new(vb.pp("conv_in"), unet.in_channels, ch[0], 3, 1, 1)?,
            time_linear_1: linear(ch[0], temb, vb.pp("time_embedding.linear_1"))?,
            time_linear_2: linear(temb, temb, vb.pp("time_embedding.linear_2"))?,
            added: match unet.addition {
                Some(a) => Some(AddedEmbedding {
                    linear_1: linear(a.input_dim, temb, vb.pp("add_embedding.linear_1"))?,
                    linear_2: linear(temb, temb, vb.pp("add_embedding.linear_2"))?,
                    time_embed_dim: a.time_embed_dim,
                }),
                None => None,
            },
            down,
            mid_resnets,
            mid_attention,
            up,
            norm_out: group_norm(spec.groups, ch[0], cfg.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::new(vb.pp("conv_out"), ch[0], unet.out_channels, 3, 1, 1)?,
            base_channels: ch[0],
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            center_input: cfg.center_input_sample,
        })
    }

    /// Predicts noise (or v, or the sample) at timestep `t` for `xs`
    /// [s, c, h, w], conditioned on `context` [b, tokens, dim] and, for
    /// SDXL, on `added` (required exactly when the config asks for it),
    /// into [b, c, h, w].
    ///
    /// `b` is a multiple of `s`: each sample serves `b / s` conditionings,
    /// as `cat([xs] * (b / s))` would (a guided step's latents, once for
    /// the unconditional and once for the conditional prompt). The layers
    /// before the first cross-attention, where the conditionings first
    /// differ, then run once for all of them rather than once each. SDXL's
    /// added conditioning differs from the first block on: there the
    /// samples are copied out at the start.
    pub fn forward(
        &self,
        xs: &Tensor,
        t: f64,
        context: &Tensor,
        added: Option<&AddedConditioning>,
    ) -> Result<Tensor> {
        let (samples, _, _, _) = xs.dims4()?;
        let b = context.dim(0)?;
        if samples == 0 || b % samples != 0 {
            candle_core::bail!(
                "the UNet got {samples} samples for {b} conditionings: each sample needs the same number"
            );
        }
        let dtype = xs.dtype();
        let xs = if self.center_input {
            ((xs * 2.0)? - 1.0)?
        } else {
            xs.clone()
        };
        let xs = match added {
            Some(_) => per_conditioning(&xs, b)?,
            None => xs,
        };
        let temb = sinusoidal_features(
            &[t as f32],
            self.base_channels,
            self.flip_sin_to_cos,
            self.freq_shift,
            xs.device(),
        )?
        .repeat((b, 1))?
        .to_dtype(dtype)?;
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb)?.silu()?)?;
        let temb = match (&self.added, added) {
            (Some(embedding), Some(cond)) => {
                let time = sinusoidal_features(
                    &cond.time_ids,
                    embedding.time_embed_dim,
                    self.flip_sin_to_cos,
                    self.freq_shift,
                    xs.device(),
                )?
                .reshape((b, ()))?
                .to_dtype(dtype)?;
                let input = Tensor::cat(&[&cond.text_embeds.to_dtype(dtype)?, &time], 1)?;
                let aug = embedding
                    .linear_2
                    .forward(&embedding.linear_1.forward(&input)?.silu()?)?;
                (temb + aug)?
            }
            (None, None) => temb,
            (Some(_), None) => {
                candle_core::bail!("this UNet (SDXL) needs the pooled text embedding and time ids")
            }
            (None, Some(_)) => {
                candle_core::bail!("this UNet takes no added conditioning (not SDXL)")
            }
        };

        // The time embedding of x's samples: every row is the same unless
        // added conditioning made them differ, and then x has all b rows.
        let temb_for = |x: &Tensor| temb.narrow(0, 0, x.dim(0)?);

        let mut x = self.conv_in.forward(&xs)?;
        let mut skips = vec![x.clone()];
        for block in &self.down {
            for (j, resnet) in block.resnets.iter().enumerate() {
                x = resnet.forward(&x, Some(&temb_for(&x)?))?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(&x, context)?;
                }
                skips.push(x.clone());
            }
            if let Some(down) = &block.resample {
                x = section("up/down sampling", x.device(), || down.forward(&x))?;
                skips.push(x.clone());
            }
        }

        x = self.mid_resnets[0].forward(&x, Some(&temb_for(&x)?))?;
        x = self.mid_attention.forward(&x, context)?;
        x = self.mid_resnets[1].forward(&x, Some(&temb_for(&x)?))?;

        for block in &self.up {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                let skip = per_conditioning(&skip, x.dim(0)?)?;
                let joined = section("skip concat", x.device(), || Tensor::cat(&[&x, &skip], 1))?;
                x = resnet.forward(&joined, Some(&temb_for(&joined)?))?;
                if let Some(attn) = block.attentions.get(j) {
                    x = attn.forward(&x, context)?;
                }
            }
            if let Some(up) = &block.resample {
                // Upsample to the size of the skip this level will meet, so
                // latents not divisible by 2^levels round-trip.
                let (h, w) = match skips.last() {
                    Some(s) => (s.dim(2)?, s.dim(3)?),
                    None => (x.dim(2)? * 2, x.dim(3)? * 2),
                };
                x = section("up/down sampling", x.device(), || {
                    up.forward_upsampled(&x, h, w)
                })?;
            }
        }
        let x = self.norm_out.forward_silu(&x)?;
        // A UNet without cross-attention never copied its samples out.
        per_conditioning(&self.conv_out.forward(&x)?, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    use crate::engine::blocks::with_bf16_products;
    use crate::engine::profile;

    /// A small cross-attention layer (8 wide, context 6 wide, 2 heads) with
    /// candle's initial weights.
    fn small_cross_attention() -> Result<Attention> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        Attention::new(vb, 8, 6, 2, false)
    }

    /// `attn` over `xs` to `context`, plus `residual`, as its layers compute
    /// it with nothing kept or skipped.
    fn computed_in_full(
        attn: &Attention,
        xs: &Tensor,
        context: &Tensor,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let q = attn.to_q.forward(xs)?;
        let k = attn.to_k.forward(context)?;
        let v = attn.to_v.forward(context)?;
        let out = attention(&q, &k, &v, attn.heads, attn.mode)?;
        attn.to_out.forward_add(&out, residual)
    }

    /// Cross-attention reuses K and V only for the same context tensor: a
    /// new context, even one with equal shape, gets its own projections.
    #[test]
    fn cross_attention_projects_each_new_context() -> Result<()> {
        let dev = Device::Cpu;
        let attn = small_cross_attention()?;
        let xs = Tensor::randn(0f32, 1., (2, 5, 8), &dev)?;
        let residual = xs.zeros_like()?;
        let a = Tensor::randn(0f32, 1., (2, 3, 6), &dev)?;
        let b = Tensor::randn(0f32, 1., (2, 3, 6), &dev)?;
        for context in [&a, &a, &b, &a] {
            let got = attn.forward_add(&xs, Some(context), &residual)?;
            let diff = (got - computed_in_full(&attn, &xs, context, &residual)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert!(diff < 1e-6, "{diff}");
        }
        Ok(())
    }

    /// Samples whose context is all zeros get what the whole computation
    /// gives them (the output bias), in their place among the others, for
    /// less arithmetic.
    #[test]
    fn samples_with_a_zero_context_get_the_output_bias() -> Result<()> {
        let dev = Device::Cpu;
        let attn = small_cross_attention()?;
        let xs = Tensor::randn(0f32, 1., (4, 5, 8), &dev)?;
        let residual = Tensor::randn(0f32, 1., (4, 5, 8), &dev)?;
        let cond = Tensor::randn(0f32, 1., (1, 3, 6), &dev)?;
        let zero = cond.zeros_like()?;
        // Zeros first (the guided layout), then in the middle and last.
        let context = Tensor::cat(&[&zero, &cond, &zero, &cond], 0)?;
        let fresh = computed_in_full(&attn, &xs, &context, &residual)?;
        let bias = fresh.narrow(0, 0, 1)? - residual.narrow(0, 0, 1)?;
        let bias = bias?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(bias > 0.01, "a real bias: {bias}");
        let got = attn.forward_add(&xs, Some(&context), &residual)?;
        let diff = (&got - &fresh)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "{diff}");
        // Counted with the context's projections already made.
        let counted = |context: &Tensor| -> Result<u64> {
            attn.context_kv(context)?;
            profile::flops_of(|| attn.forward_add(&xs, Some(context), &residual))
        };
        let all_given = Tensor::cat(&[&cond, &cond, &cond, &cond], 0)?;
        assert_eq!(
            2 * counted(&context)?,
            counted(&all_given)?,
            "half the samples computed"
        );
        Ok(())
    }

    /// The gate in the product's epilogue (bf16 products, and f32 ones in
    /// panels) gives what the projection stored and then gated gives, value
    /// for value: its columns and bias packed in their order (five panels,
    /// more than one task's; rows that fill no whole tile).
    #[test]
    fn the_gated_product_matches_the_projection_then_the_gate() -> Result<()> {
        let (dev, dim, inner) = (Device::Cpu, 40, 80);
        let values = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.618).sin() * scale).collect()
        };
        let weight = Tensor::from_vec(values(2 * inner * dim, 0.3), (2 * inner, dim), &dev)?;
        let bias = Tensor::from_vec(values(2 * inner, 1.0), 2 * inner, &dev)?;
        let xs = Tensor::from_vec(values(2 * 37 * dim, 1.0), (2, 37, dim), &dev)?;
        for (bf16, here) in [
            (false, crate::engine::cpu::f32_products::enabled()),
            (true, crate::engine::cpu::bf16::available()),
        ] {
            if !here {
                eprintln!("skipped (bf16 {bf16}): this CPU has no such products");
                continue;
            }
            let tensors = [("weight", &weight), ("bias", &bias)]
                .map(|(name, t)| (name.to_string(), t.clone()))
                .into();
            let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
            let gated = with_bf16_products(bf16, || Geglu::new(vb, dim, inner))?;
            assert!(gated.gated_in_product, "bf16 {bf16}");
            let stored =
                with_bf16_products(bf16, || Linear::new(weight.clone(), Some(bias.clone())))?;
            let got = gated.forward(&xs)?;
            let want = ops::geglu(&stored.forward(&xs)?)?;
            assert_eq!(got.dims(), [2, 37, inner]);
            assert_eq!(
                got.flatten_all()?.to_vec1::<f32>()?,
                want.flatten_all()?.to_vec1::<f32>()?,
                "bf16 {bf16}"
            );
        }
        Ok(())
    }
}
