//! Images for the preview pane, decoded, resized and encoded off the UI
//! thread. The loader keeps recently decoded images, so going back to a run
//! is instant; answers for a preview no longer wanted are dropped.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};

use image::DynamicImage;
use ratatui::buffer::Buffer;
use ratatui::layout::{Rect, Size};
use ratatui_image::picker::Picker;
use ratatui_image::protocol::StatefulProtocol;
use ratatui_image::{Resize, ResizeEncodeRender};

use super::view::PreviewTarget;

/// Thumbnail size in pixels: 6 cells wide, 2 lines of half-blocks tall.
pub const THUMB_W: u32 = 6;
pub const THUMB_H: u32 = 4;

/// Tiny thumbnails of runs' outputs, by run id.
pub type Thumbs = std::collections::HashMap<u64, image::RgbImage>;

pub enum Request {
    /// A run's thumbnail for the history list.
    Thumb { id: u64, path: PathBuf },
    /// Decode a file (or take it from the cache) and make a protocol.
    Load {
        generation: u64,
        key: PreviewTarget,
        path: PathBuf,
    },
    /// Make a protocol for an image already in memory (live previews).
    Show {
        generation: u64,
        image: DynamicImage,
    },
    /// Resize and encode for an area.
    Resize {
        generation: u64,
        protocol: Box<StatefulProtocol>,
        resize: Resize,
        size: Size,
    },
}

pub enum Response {
    Thumb {
        id: u64,
        image: image::RgbImage,
    },
    Ready {
        generation: u64,
        protocol: Box<StatefulProtocol>,
    },
    Failed {
        generation: u64,
        error: String,
    },
}

/// How previews are scaled into their pane: down as well as up, with a
/// triangle filter, since ratatui-image's default (nearest pixel) makes a
/// photograph shrunk to a pane look speckled and its edges jagged; about
/// 55 ms for a 4000x3000 source to 560 px, off the UI thread.
pub const PREVIEW_RESIZE: Resize = Resize::Scale(Some(image::imageops::FilterType::Triangle));

/// Decoded previews kept for going back to a run: at most this many
/// bytes (a few photographs at full size, or many outputs).
const CACHE_BYTES: usize = 256 << 20;

/// The image shown in the preview pane.
pub struct ImageSlot {
    pub generation: u64,
    protocol: Option<Box<StatefulProtocol>>,
    /// None: resize inline (tests); Some: send to the loader thread.
    tx: Option<Sender<Request>>,
}

impl ImageSlot {
    pub fn pending(generation: u64, tx: Sender<Request>) -> Self {
        Self {
            generation,
            protocol: None,
            tx: Some(tx),
        }
    }

    /// A slot that resizes on the calling thread (for tests and benches).
    pub fn inline(protocol: StatefulProtocol) -> Self {
        Self {
            generation: 0,
            protocol: Some(Box::new(protocol)),
            tx: None,
        }
    }

    /// The size the image takes inside `area` (scaled to fit), when known.
    pub fn size_for(&self, area: Size) -> Option<Size> {
        self.protocol
            .as_ref()
            .map(|p| p.size_for(PREVIEW_RESIZE, area))
    }

    pub fn is_ready(&self) -> bool {
        self.protocol.is_some()
    }

    pub fn accept(&mut self, response: Response) -> Option<String> {
        match response {
            Response::Ready {
                generation,
                protocol,
            } if generation == self.generation => {
                self.protocol = Some(protocol);
                None
            }
            Response::Failed { generation, error } if generation == self.generation => Some(error),
            _ => None,
        }
    }
}

impl ResizeEncodeRender for ImageSlot {
    fn needs_resize(&self, resize: &Resize, size: Size) -> Option<Size> {
        self.protocol
            .as_ref()
            .and_then(|p| p.needs_resize(resize, size))
    }

    fn resize_encode(&mut self, resize: &Resize, size: Size) {
        match &self.tx {
            None => {
                if let Some(p) = self.protocol.as_mut() {
                    p.resize_encode(resize, size);
                }
            }
            Some(tx) => {
                if let Some(protocol) = self.protocol.take() {
                    let _ = tx.send(Request::Resize {
                        generation: self.generation,
                        protocol,
                        resize: resize.clone(),
                        size,
                    });
                }
            }
        }
    }

    fn render(&mut self, area: Rect, buf: &mut Buffer) {
        if let Some(p) = self.protocol.as_mut() {
            p.render(area, buf);
        }
    }
}

/// The loader thread: decodes with a small cache, resizes and encodes.
/// `wake` is called after each answer so the UI loop redraws.
pub fn spawn(
    picker: Picker,
    rx: Receiver<Request>,
    tx: Sender<Response>,
    wake: impl Fn() + Send + 'static,
) {
    std::thread::Builder::new()
        .name("atelier-images".into())
        .spawn(move || {
            let mut cache: VecDeque<(PreviewTarget, DynamicImage)> = VecDeque::new();
            while let Ok(request) = rx.recv() {
                let response = match request {
                    Request::Thumb { id, path } => {
                        match crate::engine::source::load_source(&path) {
                            Ok(img) => {
                                let rgb = crate::engine::source::flatten_to_rgb(&img);
                                let image = image::imageops::resize(
                                    &rgb,
                                    THUMB_W,
                                    THUMB_H,
                                    image::imageops::FilterType::Triangle,
                                );
                                Response::Thumb { id, image }
                            }
                            Err(_) => continue,
                        }
                    }
                    Request::Load {
                        generation,
                        key,
                        path,
                    } => {
                        let cached = cache
                            .iter()
                            .position(|(k, _)| *k == key)
                            .and_then(|i| cache.remove(i));
                        let image = match cached {
                            Some((_, img)) => Ok(img),
                            None => crate::engine::source::load_source(&path)
                                .map_err(|e| format!("{e:#}")),
                        };
                        match image {
                            Ok(img) => {
                                cache.push_front((key, img.clone()));
                                while cache.len() > 1
                                    && cache.iter().map(|(_, i)| i.as_bytes().len()).sum::<usize>()
                                        > CACHE_BYTES
                                {
                                    cache.pop_back();
                                }
                                Response::Ready {
                                    generation,
                                    protocol: Box::new(picker.new_resize_protocol(img)),
                                }
                            }
                            Err(error) => Response::Failed { generation, error },
                        }
                    }
                    Request::Show { generation, image } => Response::Ready {
                        generation,
                        protocol: Box::new(picker.new_resize_protocol(image)),
                    },
                    Request::Resize {
                        generation,
                        mut protocol,
                        resize,
                        size,
                    } => {
                        protocol.resize_encode(&resize, size);
                        Response::Ready {
                            generation,
                            protocol,
                        }
                    }
                };
                if tx.send(response).is_err() {
                    break;
                }
                wake();
            }
        })
        .expect("spawn the image loader");
}
