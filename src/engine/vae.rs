//! The KL autoencoder (diffusers' `AutoencoderKL`), assembled from candle's
//! public blocks. Written here rather than taken whole from
//! candle-transformers because img2img needs the posterior *mean*, which
//! candle's `DiagonalGaussianDistribution` keeps private.

use candle_core::{Module, Result, Tensor};
use candle_nn::{conv2d, group_norm, Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
    UpDecoderBlock2D, UpDecoderBlock2DConfig,
};

use super::config::VaeSpec;

const EPS: f64 = 1e-6;

fn mid_block(vb: VarBuilder, channels: usize, groups: usize) -> Result<UNetMidBlock2D> {
    let cfg = UNetMidBlock2DConfig {
        resnet_eps: EPS,
        output_scale_factor: 1.,
        attn_num_head_channels: None,
        resnet_groups: Some(groups),
        ..Default::default()
    };
    UNetMidBlock2D::new(vb, channels, None, cfg)
}

const PAD1: Conv2dConfig = Conv2dConfig {
    padding: 1,
    stride: 1,
    dilation: 1,
    groups: 1,
    cudnn_fwd_algo: None,
};

struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownEncoderBlock2D>,
    mid: UNetMidBlock2D,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, spec: &VaeSpec) -> Result<Self> {
        let ch = &spec.block_out_channels;
        let last = *ch.last().expect("checked non-empty");
        let conv_in = conv2d(spec.in_channels, ch[0], 3, PAD1, vb.pp("conv_in"))?;
        let down = (0..ch.len())
            .map(|i| {
                let cfg = DownEncoderBlock2DConfig {
                    num_layers: spec.layers_per_block,
                    resnet_eps: EPS,
                    resnet_groups: spec.norm_num_groups,
                    add_downsample: i + 1 < ch.len(),
                    downsample_padding: 0,
                    ..Default::default()
                };
                let in_ch = if i == 0 { ch[0] } else { ch[i - 1] };
                DownEncoderBlock2D::new(vb.pp(format!("down_blocks.{i}")), in_ch, ch[i], cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in,
            down,
            mid: mid_block(vb.pp("mid_block"), last, spec.norm_num_groups)?,
            norm_out: group_norm(spec.norm_num_groups, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(last, 2 * spec.latent_channels, 3, PAD1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid.forward(&xs, None)?;
        let xs = candle_nn::ops::silu(&self.norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: UNetMidBlock2D,
    up: Vec<UpDecoderBlock2D>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, spec: &VaeSpec) -> Result<Self> {
        let rev: Vec<usize> = spec.block_out_channels.iter().rev().copied().collect();
        let first = spec.block_out_channels[0];
        let up = (0..rev.len())
            .map(|i| {
                let cfg = UpDecoderBlock2DConfig {
                    num_layers: spec.layers_per_block + 1,
                    resnet_eps: EPS,
                    resnet_groups: spec.norm_num_groups,
                    add_upsample: i + 1 < rev.len(),
                    ..Default::default()
                };
                let in_ch = if i == 0 { rev[0] } else { rev[i - 1] };
                UpDecoderBlock2D::new(vb.pp(format!("up_blocks.{i}")), in_ch, rev[i], cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: conv2d(spec.latent_channels, rev[0], 3, PAD1, vb.pp("conv_in"))?,
            mid: mid_block(vb.pp("mid_block"), rev[0], spec.norm_num_groups)?,
            up,
            norm_out: group_norm(spec.norm_num_groups, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(first, spec.out_channels, 3, PAD1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.mid.forward(&self.conv_in.forward(xs)?, None)?;
        for block in &self.up {
            xs = block.forward(&xs)?;
        }
        let xs = candle_nn::ops::silu(&self.norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
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
        let cfg = Conv2dConfig::default();
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), spec)?,
            decoder: Decoder::new(vb.pp("decoder"), spec)?,
            quant_conv: spec
                .use_quant_conv
                .then(|| conv2d(2 * l, 2 * l, 1, cfg, vb.pp("quant_conv")))
                .transpose()?,
            post_quant_conv: spec
                .use_post_quant_conv
                .then(|| conv2d(l, l, 1, cfg, vb.pp("post_quant_conv")))
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
