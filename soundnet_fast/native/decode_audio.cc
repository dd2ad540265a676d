// The FFmpeg half of fn.soundnet_fast.decode_audio: one in-memory file -> mono float32 at its own rate.
// Every step mirrors soundnet_fast/audio.py's load() (docs/design.md#the-native-dali-audio-operator); the
// comments name the line of load() each one follows.
#include "decode_audio.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <string>

extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/avutil.h>
#include <libavutil/error.h>
#include <libavutil/mem.h>
#include <libavutil/samplefmt.h>
}

namespace soundnet_fast {
namespace {

constexpr int kIoBufferBytes = 1 << 16;
// Reserved up front from the container's duration, but never more than this many samples per input byte, so
// a hostile header cannot make us reserve gigabytes for a tiny file (growth past it is the vector's).
constexpr size_t kReservePerByte = 64;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string AvError(int code) {
  char buf[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(code, buf, sizeof(buf));
  return buf;
}

// Reads and seeks stay inside [data, data + size): every offset is checked before use.
struct MemoryReader {
  const uint8_t *data;
  size_t size;
  size_t pos;
};

int ReadPacket(void *opaque, uint8_t *buf, int buf_size) {
  auto *r = static_cast<MemoryReader *>(opaque);
  if (buf_size <= 0) return 0;
  size_t left = r->pos < r->size ? r->size - r->pos : 0;
  if (left == 0) return AVERROR_EOF;
  size_t n = std::min(left, static_cast<size_t>(buf_size));
  std::memcpy(buf, r->data + r->pos, n);
  r->pos += n;
  return static_cast<int>(n);
}

int64_t Seek(void *opaque, int64_t offset, int whence) {
  auto *r = static_cast<MemoryReader *>(opaque);
  whence &= ~AVSEEK_FORCE;
  if (whence == AVSEEK_SIZE) return static_cast<int64_t>(r->size);
  int64_t base;
  if (whence == SEEK_SET) {
    base = 0;
  } else if (whence == SEEK_CUR) {
    base = static_cast<int64_t>(r->pos);
  } else if (whence == SEEK_END) {
    base = static_cast<int64_t>(r->size);
  } else {
    return AVERROR(EINVAL);
  }
  if ((offset > 0 && base > std::numeric_limits<int64_t>::max() - offset)) return AVERROR(EINVAL);
  int64_t target = base + offset;
  if (target < 0 || static_cast<uint64_t>(target) > r->size) return AVERROR(EINVAL);
  r->pos = static_cast<size_t>(target);
  return target;
}

// Owners of the FFmpeg objects, so every return path frees them.
struct Demuxer {
  MemoryReader reader{};
  AVIOContext *io = nullptr;
  AVFormatContext *fmt = nullptr;
  ~Demuxer() {
    if (fmt) avformat_close_input(&fmt);  // custom I/O: does not free io
    if (io) {
      av_freep(&io->buffer);
      avio_context_free(&io);
    }
  }
};
struct CodecDeleter {
  void operator()(AVCodecContext *c) const { avcodec_free_context(&c); }
};
struct PacketDeleter {
  void operator()(AVPacket *p) const { av_packet_free(&p); }
};
struct FrameDeleter {
  void operator()(AVFrame *f) const { av_frame_free(&f); }
};

int Channels(const AVFrame *f) {
#if LIBAVUTIL_VERSION_INT >= AV_VERSION_INT(57, 24, 100)
  return f->ch_layout.nb_channels;
#else
  return f->channels;
#endif
}

// One sample of channel c at index i as load()'s _to_float scales it: int16 / 2^15, int32 / 2^31 (in double),
// uint8 (x - 128) / 128, floats unchanged.
template <typename T>
float ToFloat(T x);
template <>
float ToFloat(uint8_t x) { return (static_cast<float>(x) - 128.f) / 128.f; }
template <>
float ToFloat(int16_t x) { return static_cast<float>(x) / 32768.f; }
template <>
float ToFloat(int32_t x) { return static_cast<float>(static_cast<double>(x) / 2147483648.0); }
template <>
float ToFloat(int64_t x) { return static_cast<float>(static_cast<double>(x) / 9223372036854775808.0); }
template <>
float ToFloat(float x) { return x; }
template <>
float ToFloat(double x) { return static_cast<float>(x); }

template <typename T>
void AppendMono(const AVFrame *f, int channels, bool planar, Mono mono, std::vector<float> *out) {
  const size_t n = static_cast<size_t>(f->nb_samples), base = out->size();
  out->resize(base + n);
  float *dst = out->data() + base;
  auto at = [&](int c, size_t i) -> float {
    const T *plane = reinterpret_cast<const T *>(f->extended_data[planar ? c : 0]);
    return ToFloat<T>(planar ? plane[i] : plane[i * channels + c]);
  };
  if (mono == Mono::kFirst || channels == 1) {  // load(): arr[0], the original's first channel
    for (size_t i = 0; i < n; ++i) dst[i] = at(0, i);
    return;
  }
  for (size_t i = 0; i < n; ++i) {  // load(): arr.mean(axis=0) in float32
    float sum = 0.f;
    for (int c = 0; c < channels; ++c) sum += at(c, i);
    dst[i] = sum / static_cast<float>(channels);
  }
}

bool AppendFrame(const AVFrame *f, Mono mono, std::vector<float> *out) {
  const int channels = Channels(f);
  if (channels <= 0 || f->nb_samples < 0 || !f->extended_data) return false;
  const auto fmt = static_cast<AVSampleFormat>(f->format);
  const bool planar = av_sample_fmt_is_planar(fmt);
  switch (av_get_packed_sample_fmt(fmt)) {
    case AV_SAMPLE_FMT_U8: AppendMono<uint8_t>(f, channels, planar, mono, out); return true;
    case AV_SAMPLE_FMT_S16: AppendMono<int16_t>(f, channels, planar, mono, out); return true;
    case AV_SAMPLE_FMT_S32: AppendMono<int32_t>(f, channels, planar, mono, out); return true;
    case AV_SAMPLE_FMT_S64: AppendMono<int64_t>(f, channels, planar, mono, out); return true;
    case AV_SAMPLE_FMT_FLT: AppendMono<float>(f, channels, planar, mono, out); return true;
    case AV_SAMPLE_FMT_DBL: AppendMono<double>(f, channels, planar, mono, out); return true;
    default: return false;
  }
}

double Seconds(int64_t ts, AVRational tb) {
  // load(): float(pts * Fraction(time_base)): exact product, one rounding.
  return static_cast<double>(ts) * tb.num / tb.den;
}

DecodeResult Fail(DecodeResult r, Status status, std::string message) {
  r.status = status;
  r.message = std::move(message);
  r.samples.clear();
  r.samples.shrink_to_fit();
  return r;
}

// Where the encoded bytes come from: a buffer in memory (data, size) or, when `path` is set, a file on disk.
struct Source {
  const uint8_t *data = nullptr;
  size_t size = 0;
  const std::string *path = nullptr;
};

DecodeResult Decode(const Source &src, const DecodeOptions &opt) {
  DecodeResult r;
  r.first_time = r.stream_start = kNaN;
  Demuxer d;
  size_t size = src.size;
  int err = 0;
  if (src.path) {
    d.fmt = avformat_alloc_context();
    if (!d.fmt) return Fail(std::move(r), kUndecodable, "out of memory");
    // "file:" + the path: FFmpeg's file protocol only, so a ':' in a relative name ("12:30 clip.wav") is not
    // read as a protocol, and no path reaches the network or a pipe.
    const std::string url = "file:" + *src.path;
    err = avformat_open_input(&d.fmt, url.c_str(), nullptr, nullptr);  // frees fmt on failure
    if (err == AVERROR(ENOENT) || err == AVERROR(EACCES) || err == AVERROR(EISDIR))
      return Fail(std::move(r), kUndecodable, "cannot read (" + AvError(err) + ")");
    if (err >= 0) {
      const int64_t n = avio_size(d.fmt->pb);
      size = n > 0 ? static_cast<size_t>(n) : 0;
      if (n == 0) return Fail(std::move(r), kEmpty, "file is empty (0 bytes)");  // load(): getsize == 0
    }
  } else {
    if (size == 0) return Fail(std::move(r), kEmpty, "file is empty (0 bytes)");  // load(): getsize == 0
    d.reader = {src.data, size, 0};
    auto *buf = static_cast<uint8_t *>(av_malloc(kIoBufferBytes));
    if (!buf) return Fail(std::move(r), kUndecodable, "out of memory");
    d.io = avio_alloc_context(buf, kIoBufferBytes, 0, &d.reader, ReadPacket, nullptr, Seek);
    if (!d.io) {
      av_free(buf);
      return Fail(std::move(r), kUndecodable, "out of memory");
    }
    d.fmt = avformat_alloc_context();
    if (!d.fmt) return Fail(std::move(r), kUndecodable, "out of memory");
    d.fmt->pb = d.io;
    d.fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    err = avformat_open_input(&d.fmt, nullptr, nullptr, nullptr);  // frees fmt on failure
  }
  if (err < 0) return Fail(std::move(r), kUndecodable, "cannot open as a media file (" + AvError(err) + ")");
  err = avformat_find_stream_info(d.fmt, nullptr);  // as av.open() does
  if (err < 0) return Fail(std::move(r), kUndecodable, "cannot read the streams (" + AvError(err) + ")");

  // load(): container.streams.audio[0], the first audio stream in stream order.
  int aidx = -1;
  for (unsigned i = 0; i < d.fmt->nb_streams; ++i) {
    if (d.fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_AUDIO) {
      aidx = static_cast<int>(i);
      break;
    }
  }
  if (aidx < 0) return Fail(std::move(r), kNoAudio, "holds no audio stream");
  AVStream *st = d.fmt->streams[aidx];
  for (unsigned i = 0; i < d.fmt->nb_streams; ++i)
    if (static_cast<int>(i) != aidx) d.fmt->streams[i]->discard = AVDISCARD_ALL;  // skip video packets
  if (st->start_time != AV_NOPTS_VALUE) r.stream_start = Seconds(st->start_time, st->time_base);

  const AVCodec *codec = avcodec_find_decoder(st->codecpar->codec_id);
  if (!codec) {
    return Fail(std::move(r), kUndecodable,
                std::string("no decoder for the audio codec ") + avcodec_get_name(st->codecpar->codec_id));
  }
  std::unique_ptr<AVCodecContext, CodecDeleter> ctx(avcodec_alloc_context3(codec));
  if (!ctx) return Fail(std::move(r), kUndecodable, "out of memory");
  if ((err = avcodec_parameters_to_context(ctx.get(), st->codecpar)) < 0)
    return Fail(std::move(r), kUndecodable, "cannot set up the audio decoder (" + AvError(err) + ")");
  ctx->pkt_timebase = st->time_base;  // frame pts in the stream's time base, as PyAV's
  ctx->thread_count = 1;             // the samples of a batch already run in parallel on DALI's threads
  if ((err = avcodec_open2(ctx.get(), codec, nullptr)) < 0)
    return Fail(std::move(r), kUndecodable, "cannot open the audio decoder (" + AvError(err) + ")");

  if (st->duration != AV_NOPTS_VALUE && st->codecpar->sample_rate > 0) {
    double seconds = Seconds(st->duration, st->time_base);
    if (seconds > 0 && seconds < 1e7) {
      size_t want = static_cast<size_t>(seconds * st->codecpar->sample_rate) + 4096;
      r.samples.reserve(std::min(want, kReservePerByte * size));
    }
  }

  std::unique_ptr<AVPacket, PacketDeleter> pkt(av_packet_alloc());
  std::unique_ptr<AVFrame, FrameDeleter> frame(av_frame_alloc());
  if (!pkt || !frame) return Fail(std::move(r), kUndecodable, "out of memory");
  bool have_first = false;
  double first_pts = 0.0;
  std::string stopped;  // load(): a damaged tail keeps what decoded
  auto receive = [&]() -> bool {
    for (;;) {
      int e = avcodec_receive_frame(ctx.get(), frame.get());
      if (e == AVERROR(EAGAIN) || e == AVERROR_EOF) return true;
      if (e < 0) {
        stopped = "cannot decode audio (" + AvError(e) + ")";
        return false;
      }
      if (frame->sample_rate <= 0) {
        stopped = "audio frame without a sample rate";
        return false;
      }
      if (r.rate == 0.f) {
        r.rate = static_cast<float>(frame->sample_rate);
      } else if (static_cast<float>(frame->sample_rate) != r.rate) {  // prepare's decode(): an error
        stopped = "audio sample rate changes mid-stream";
        r.status = kUndecodable;
        return false;
      }
      if (!have_first && frame->pts != AV_NOPTS_VALUE) {  // load(): the first frame that has a pts
        have_first = true;
        first_pts = Seconds(frame->pts, st->time_base);
      }
      if (!AppendFrame(frame.get(), opt.mono, &r.samples)) {
        const char *name = av_get_sample_fmt_name(static_cast<AVSampleFormat>(frame->format));
        stopped = std::string("unsupported sample format ") + (name ? name : "?");
        return false;
      }
      av_frame_unref(frame.get());
    }
  };
  r.status = kOk;
  bool ok = true;
  for (;;) {
    err = av_read_frame(d.fmt, pkt.get());
    if (err == AVERROR_EOF) break;
    if (err < 0) {  // PyAV raises here; load() keeps what decoded
      stopped = "cannot read the file (" + AvError(err) + ")";
      ok = false;
      break;
    }
    if (pkt->stream_index != aidx) {
      av_packet_unref(pkt.get());
      continue;
    }
    err = avcodec_send_packet(ctx.get(), pkt.get());
    av_packet_unref(pkt.get());
    if (err < 0 && err != AVERROR(EAGAIN)) {
      stopped = "cannot decode audio (" + AvError(err) + ")";
      ok = false;
      break;
    }
    if (!(ok = receive())) break;
  }
  if (ok && avcodec_send_packet(ctx.get(), nullptr) >= 0) ok = receive();  // drain, as PyAV's flush packet
  if (r.status != kOk) return Fail(std::move(r), static_cast<Status>(r.status), stopped);
  if (r.samples.empty()) {
    if (!stopped.empty()) return Fail(std::move(r), kUndecodable, stopped);
    return Fail(std::move(r), kEmpty, "audio stream decoded to no samples");
  }
  r.message = stopped.empty() ? "" : stopped + " after " + std::to_string(r.samples.size()) + " samples";

  // load(): lead = first frame's pts, else the stream's start time; samples before t = 0 are priming.
  double lead = have_first ? first_pts : (std::isnan(r.stream_start) ? 0.0 : r.stream_start);
  r.first_time = have_first ? first_pts : r.stream_start;
  if (opt.trim) {
    if (lead < 0) {
      double drop_f = std::nearbyint(-lead * r.rate);  // int(round(-lead * native_rate)): half to even
      size_t drop = drop_f >= static_cast<double>(r.samples.size()) ? r.samples.size() : static_cast<size_t>(drop_f);
      r.samples.erase(r.samples.begin(), r.samples.begin() + static_cast<std::ptrdiff_t>(drop));
      r.first_time = lead + static_cast<double>(drop) / r.rate;
    }
    // load(): the encoder's padding past the stream's duration, when the excess is under 0.1 s.
    if (st->duration != AV_NOPTS_VALUE) {
      double expected_f = std::nearbyint(Seconds(st->duration, st->time_base) * r.rate);
      const double n = static_cast<double>(r.samples.size());
      const double slack = static_cast<double>(static_cast<int64_t>(r.rate) / 10);
      if (expected_f > 0 && expected_f < n && n <= expected_f + slack) r.samples.resize(static_cast<size_t>(expected_f));
    }
    if (r.samples.empty()) return Fail(std::move(r), kEmpty, "audio stream decoded to no samples after trimming");
  }
  return r;
}

}  // namespace

namespace {
DecodeResult Guarded(const Source &src, const DecodeOptions &options) {
  try {
    return Decode(src, options);
  } catch (const std::bad_alloc &) {
    DecodeResult r;
    r.first_time = r.stream_start = kNaN;
    return Fail(std::move(r), kUndecodable, "out of memory while decoding");
  } catch (const std::exception &e) {
    DecodeResult r;
    r.first_time = r.stream_start = kNaN;
    return Fail(std::move(r), kUndecodable, e.what());
  }
}
}  // namespace

DecodeResult DecodeAudio(const uint8_t *data, size_t size, const DecodeOptions &options) {
  Source src;
  src.data = data;
  src.size = size;
  return Guarded(src, options);
}

DecodeResult DecodeAudioFile(const std::string &path, const DecodeOptions &options) {
  Source src;
  src.path = &path;
  return Guarded(src, options);
}

}  // namespace soundnet_fast
