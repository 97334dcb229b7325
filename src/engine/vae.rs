//! The KL autoencoder (diffusers' `AutoencoderKL`), built from the blocks the
//! UNet uses (so its convolutions and attention take the fast CPU kernels).
//! img2img needs the posterior *mean*, not a sample.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::blocks::{
    self, attention, group_norm, linear, AttentionMode, Conv1x1, GroupNorm, Linear, ResnetBlock,
};
use super::config::VaeSpec;
use super::conv::Conv2d;
use super::profile::section;

const EPS: f64 = 1e-6;

/// Channels on each side below which a convolution stays f32 with bf16
/// products: the VAE's first and last convolutions (3, 4 or 8 channels on
/// one side) and its 1x1 quant convolutions, whose products are too narrow
/// for bf16's panels of 32 columns to pay. (The parity cases' VAEs, of 16
/// and 32 channels, take bf16: the drift test covers this path.)
const BF16_MIN_CHANNELS: usize = 16;

/// A convolution of the VAE. Inside `with_bf16_products(true)` (`--dtype
/// bf16` on the CPU) its products are bf16 where both sides have enough
/// channels: F(2x2) in bf16 took 29.0 ms on 512 -> 512 at 64x64 and 40.6
/// on 128 -> 128 at 256x256 where F(4x4) in f32 took 39.4 and 63.3 (`cargo
/// bench --bench cpu_kernels -- convolution`, 2-core Zen 4).
fn conv(vb: VarBuilder, [cin, cout, kernel, stride, padding]: [usize; 5]) -> Result<Conv2d> {
    with_bf16_where_wide(cin.min(cout), || {
        Conv2d::new(vb, cin, cout, kernel, stride, padding)
    })
}

/// `build` with bf16 products where the model is built for them and a
/// convolution's narrower side has [`BF16_MIN_CHANNELS`], f32 ones
/// otherwise.
fn with_bf16_where_wide<T>(channels: usize, build: impl FnOnce() -> T) -> T {
    let bf16 = blocks::bf16_products() && channels >= BF16_MIN_CHANNELS;
    blocks::with_bf16_products(bf16, build)
}

fn conv3x3(vb: VarBuilder, cin: usize, cout: usize) -> Result<Conv2d> {
    conv(vb, [cin, cout, 3, 1, 1])
}

/// A decoder's up-convolution, run on the map before upsampling
/// (`Conv2d::forward_upsampled`) in f32 and in bf16 alike. bf16's took 16,
/// 68 and 100 ms at 256 px (512 channels at 32 -> 64 and 64 -> 128, 256 at
/// 128 -> 256) where f32's took 30, 87 and 104 (2-core Zen 4).
fn up_conv(vb: VarBuilder, channels: usize) -> Result<Conv2d> {
    with_bf16_where_wide(channels, || Conv2d::new_upsampling(vb, channels, channels))
}

/// A projection stored either as a linear layer or, in older checkpoints,
/// as a 1x1 convolution `[c, c, 1, 1]`.
fn projection(vb: VarBuilder, channels: usize) -> Result<Linear> {
    linear(channels, channels, vb.clone())
        .or_else(|_| Ok(Conv1x1::new(vb, channels, channels)?.into_linear()))
}

/// The mid block's self-attention: the pixels as tokens, one head over all
/// channels, residual added (diffusers' `Attention` as `AutoencoderKL`
/// configures it).
struct PixelAttention {
    norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    mode: AttentionMode,
}

impl PixelAttention {
    /// Always f32, products included: one head of all the channels (512),
    /// wider than the heads bf16's attention kernel is tested on, and 22 ms
    /// of a 256 px decode.
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        blocks::with_bf16_products(false, || Self::new_f32(vb, channels, groups))
    }

    fn new_f32(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        // diffusers renamed these; both spellings are in circulation.
        let [q, k, v, out] = if vb.contains_tensor("to_q.weight") {
            ["to_q", "to_k", "to_v", "to_out.0"]
        } else {
            ["query", "key", "value", "proj_attn"]
        };
        Ok(Self {
            norm: group_norm(groups, channels, EPS, vb.pp("group_norm"))?,
            to_q: projection(vb.pp(q), channels)?,
            to_k: projection(vb.pp(k), channels)?,
            to_v: projection(vb.pp(v), channels)?,
            to_out: projection(vb.pp(out), channels)?,
            // diffusers computes the VAE's softmax in f32 (`upcast_softmax`).
            mode: AttentionMode::new(true),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        section("attention", xs.device(), || self.forward_unprofiled(xs))
    }

    fn forward_unprofiled(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let tokens = self
            .norm
            .forward(xs)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        self.to_out
            .forward_to_map_add(&attention(&q, &k, &v, 1, self.mode)?, xs)
    }
}

/// Resnet, attention, resnet at the lowest resolution.
struct MidBlock {
    first: ResnetBlock,
    attention: PixelAttention,
    second: ResnetBlock,
}

impl MidBlock {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        let resnet = |i: usize| {
            let vb = vb.pp(format!("resnets.{i}"));
            ResnetBlock::new(vb, channels, channels, None, groups, EPS, 1.0)
        };
        Ok(Self {
            first: resnet(0)?,
            attention: PixelAttention::new(vb.pp("attentions.0"), channels, groups)?,
            second: resnet(1)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.first.forward(xs, None)?;
        let xs = self.attention.forward(&xs)?;
        self.second.forward(&xs, None)
    }
}

/// `layers` resnets, the first changing the width from `cin` to `cout`.
fn resnets(
    vb: VarBuilder,
    layers: usize,
    cin: usize,
    cout: usize,
    groups: usize,
) -> Result<Vec<ResnetBlock>> {
    (0..layers)
        .map(|j| {
            let cin = if j == 0 { cin } else { cout };
            ResnetBlock::new(
                vb.pp(format!("resnets.{j}")),
                cin,
                cout,
                None,
                groups,
                EPS,
                1.0,
            )
        })
        .collect()
}

/// An encoder level: resnets, then (except at the last level) a 3x3
/// convolution of stride 2 over the map padded by one on the right and
/// bottom only, as diffusers' `Downsample2D(padding=0)`.
struct EncoderBlock {
    resnets: Vec<ResnetBlock>,
    downsample: Option<Conv2d>,
}

impl EncoderBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for resnet in &self.resnets {
            xs = resnet.forward(&xs, None)?;
        }
        match &self.downsample {
            Some(conv) => section("up/down sampling", xs.device(), || {
                conv.forward(&xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?)
            }),
            None => Ok(xs),
        }
    }
}

/// A decoder level: resnets, then (except at the last level) nearest 2x
/// upsampling and a 3x3 convolution.
struct DecoderBlock {
    resnets: Vec<ResnetBlock>,
    upsample: Option<Conv2d>,
}

impl DecoderBlock {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for resnet in &self.resnets {
            xs = resnet.forward(&xs, None)?;
        }
        match &self.upsample {
            Some(conv) => section("up/down sampling", xs.device(), || {
                let (_, _, h, w) = xs.dims4()?;
                conv.forward_upsampled(&xs, 2 * h, 2 * w)
            }),
            None => Ok(xs),
        }
    }
}

struct Encoder {
    conv_in: Conv2d,
    down: Vec<EncoderBlock>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, spec: &VaeSpec) -> Result<Self> {
        let ch = &spec.block_out_channels;
        let groups = spec.norm_num_groups;
        let last = *ch.last().expect("checked non-empty");
        let down = (0..ch.len())
            .map(|i| {
                let vb = vb.pp(format!("down_blocks.{i}"));
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                Ok(EncoderBlock {
                    resnets: resnets(vb.clone(), spec.layers_per_block, cin, ch[i], groups)?,
                    downsample: (i + 1 < ch.len())
                        .then(|| conv(vb.pp("downsamplers.0.conv"), [ch[i], ch[i], 3, 2, 0]))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), spec.in_channels, ch[0])?,
            down,
            mid: MidBlock::new(vb.pp("mid_block"), last, groups)?,
            norm_out: group_norm(groups, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), last, 2 * spec.latent_channels)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid.forward(&xs)?;
        self.conv_out.forward(&self.norm_out.forward_silu(&xs)?)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<DecoderBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, spec: &VaeSpec) -> Result<Self> {
        let rev: Vec<usize> = spec.block_out_channels.iter().rev().copied().collect();
        let groups = spec.norm_num_groups;
        let first = spec.block_out_channels[0];
        let up = (0..rev.len())
            .map(|i| {
                let vb = vb.pp(format!("up_blocks.{i}"));
                let cin = if i == 0 { rev[0] } else { rev[i - 1] };
                let layers = spec.layers_per_block + 1;
                Ok(DecoderBlock {
                    resnets: resnets(vb.clone(), layers, cin, rev[i], groups)?,
                    upsample: (i + 1 < rev.len())
                        .then(|| up_conv(vb.pp("upsamplers.0.conv"), rev[i]))
                        .transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv3x3(vb.pp("conv_in"), spec.latent_channels, rev[0])?,
            mid: MidBlock::new(vb.pp("mid_block"), rev[0], groups)?,
            up,
            norm_out: group_norm(groups, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3x3(vb.pp("conv_out"), first, spec.out_channels)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dev = xs.device();
        let xs = section("conv 3x3", dev, || self.conv_in.forward(xs))?;
        let mut xs = self.mid.forward(&xs)?;
        for block in &self.up {
            xs = block.forward(&xs)?;
        }
        let xs = section("group norm + silu", dev, || self.norm_out.forward_silu(&xs))?;
        section("conv 3x3", dev, || self.conv_out.forward(&xs))
    }
}

pub struct Vae {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

impl Vae {
    pub fn new(vb: VarBuilder, spec: &VaeSpec) -> Result<Self> {
        let l = spec.latent_channels;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), spec)?,
            decoder: Decoder::new(vb.pp("decoder"), spec)?,
            quant_conv: spec
                .use_quant_conv
                .then(|| conv(vb.pp("quant_conv"), [2 * l, 2 * l, 1, 1, 0]))
                .transpose()?,
            post_quant_conv: spec
                .use_post_quant_conv
                .then(|| conv(vb.pp("post_quant_conv"), [l, l, 1, 1, 0]))
                .transpose()?,
            latent_channels: l,
        })
    }

    /// The posterior mean for images in [-1, 1], [b, 3, h, w] -> [b, c, h/8, w/8]
    /// (not yet multiplied by the scaling factor).
    pub fn encode_mean(&self, xs: &Tensor) -> Result<Tensor> {
        let moments = self.encoder.forward(xs)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments)?,
            None => moments,
        };
        moments.narrow(1, 0, self.latent_channels)
    }

    /// Latents (already divided by the scaling factor) -> images in about [-1, 1].
    pub fn decode(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = match &self.post_quant_conv {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        self.decoder.forward(&xs)
    }
}
