// fn.soundnet_fast.decode_audio: a DALI CPU operator that decodes the audio of any media file FFmpeg reads
// (AAC, MP3, Opus, Vorbis, FLAC, PCM... in MP4/MKV/WebM/OGG/WAV), which DALI's own fn.decoders.audio cannot
// (docs/design.md#the-native-dali-audio-operator). The samples of a batch decode in parallel on the
// pipeline's thread pool; each decoded waveform is handed to DALI without a copy.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dali/pipeline/operator/operator.h"
#include "decode_audio.h"

extern "C" {
#include <libavutil/log.h>
}

namespace soundnet_fast {
namespace {
// Status and message say why a file failed; FFmpeg's own lines on stderr ("moov atom not found") would only
// repeat it, once per bad file. This sets the level of the system FFmpeg that the plugin links, not PyAV's
// or DALI's bundled copies. SOUNDNET_FAST_FFMPEG_LOG=1 keeps FFmpeg's default.
const bool kQuietFFmpeg = [] {
  const char *keep = std::getenv("SOUNDNET_FAST_FFMPEG_LOG");
  if (!keep || !*keep || std::string(keep) == "0") av_log_set_level(AV_LOG_QUIET);
  return true;
}();
}  // namespace

class DecodeAudioOp : public ::dali::Operator<::dali::CPUBackend> {
 public:
  explicit DecodeAudioOp(const ::dali::OpSpec &spec) : ::dali::Operator<::dali::CPUBackend>(spec) {
    const std::string mono = spec.GetArgument<std::string>("mono");
    DALI_ENFORCE(mono == "first" || mono == "mean", "mono must be \"first\" or \"mean\", got \"" + mono + "\"");
    options_.mono = mono == "first" ? Mono::kFirst : Mono::kMean;
    options_.trim = spec.GetArgument<bool>("trim");
    min_samples_ = spec.GetArgument<int>("min_samples");
    DALI_ENFORCE(min_samples_ >= 0, "min_samples must be >= 0");
    from_path_ = spec.GetArgument<bool>("from_path");
  }

  // The outputs' sizes are known only once decoded: RunImpl allocates them.
  bool SetupImpl(std::vector<::dali::OutputDesc> &, const ::dali::Workspace &) override { return false; }
  bool HasContiguousOutputs() const override { return false; }

  void RunImpl(::dali::Workspace &ws) override {
    using ::dali::CPUBackend;
    const auto &in = ws.Input<CPUBackend>(0);
    DALI_ENFORCE(in.type() == DALI_UINT8, "decode_audio takes the encoded file as uint8 bytes");
    DALI_ENFORCE(in.sample_dim() == 1, "decode_audio takes one 1-D byte buffer per sample");
    const int n = in.num_samples();
    std::vector<std::shared_ptr<DecodeResult>> results(n);
    auto &pool = ws.GetThreadPool();
    for (int i = 0; i < n; ++i) {
      const int64_t bytes = in.tensor_shape_span(i)[0];
      pool.AddWork(
          [&, i, bytes](int) {
            const uint8_t *data = in.tensor<uint8_t>(i);
            if (from_path_) {  // the sample is a file path (UTF-8 bytes): FFmpeg reads the file itself
              const std::string path(reinterpret_cast<const char *>(data), static_cast<size_t>(bytes));
              results[i] = std::make_shared<DecodeResult>(DecodeAudioFile(path, options_));
            } else {
              results[i] = std::make_shared<DecodeResult>(DecodeAudio(data, static_cast<size_t>(bytes), options_));
            }
          },
          bytes);  // larger files first
    }
    pool.RunAll();

    // Output 0: the waveforms, each sample sharing its decoder's buffer (no copy).
    auto &audio = ws.Output<CPUBackend>(0);
    audio.Reset();  // drops last batch's samples; keeps the device, pinning and order
    audio.SetSize(n);
    audio.set_sample_dim(1);
    audio.set_type(DALI_FLOAT);
    for (int i = 0; i < n; ++i) {
      auto &s = results[i]->samples;
      if (s.size() < static_cast<size_t>(min_samples_)) s.resize(min_samples_, 0.f);
      if (s.capacity() == 0) s.reserve(1);  // a valid pointer for an empty sample
      const int64_t len = static_cast<int64_t>(s.size());
      std::shared_ptr<void> owner(results[i], static_cast<void *>(s.data()));  // keeps the result alive
      audio.SetSample(i, owner, s.size() * sizeof(float), audio.is_pinned(), ::dali::TensorShape<>{len},
                      DALI_FLOAT, audio.device_id(), audio.order());
    }

    // Outputs 1-4: rate, status, [first sample time, stream start time], message bytes.
    ::dali::TensorListShape<> scalars = ::dali::uniform_list_shape(n, ::dali::TensorShape<>{});
    auto &rate = ws.Output<CPUBackend>(1);
    rate.Resize(scalars, DALI_FLOAT);
    auto &status = ws.Output<CPUBackend>(2);
    status.Resize(scalars, DALI_INT32);
    auto &times = ws.Output<CPUBackend>(3);
    times.Resize(::dali::uniform_list_shape(n, ::dali::TensorShape<>{2}), DALI_FLOAT64);
    ::dali::TensorListShape<> msg_shape(n, 1);
    for (int i = 0; i < n; ++i) msg_shape.set_tensor_shape(i, {static_cast<int64_t>(results[i]->message.size())});
    auto &message = ws.Output<CPUBackend>(4);
    message.Resize(msg_shape, DALI_UINT8);
    for (int i = 0; i < n; ++i) {
      const DecodeResult &r = *results[i];
      *rate.mutable_tensor<float>(i) = r.rate;
      *status.mutable_tensor<int32_t>(i) = r.status;
      times.mutable_tensor<double>(i)[0] = r.first_time;
      times.mutable_tensor<double>(i)[1] = r.stream_start;
      if (!r.message.empty()) std::memcpy(message.mutable_tensor<uint8_t>(i), r.message.data(), r.message.size());
    }
  }

 private:
  DecodeOptions options_;
  int min_samples_ = 0;
  bool from_path_ = false;
};

}  // namespace soundnet_fast

DALI_REGISTER_OPERATOR(soundnet_fast__DecodeAudio, ::soundnet_fast::DecodeAudioOp, ::dali::CPU);

DALI_SCHEMA(soundnet_fast__DecodeAudio)
    .DocStr(R"(Decodes the first audio stream of any media file FFmpeg reads (the audio track of MP4, MKV,
WebM, MOV; MP3, AAC, Opus, Vorbis, FLAC, WAV) to mono float32 at the stream's own sample rate.

Same result as soundnet_fast.audio.load before its resampling: the first channel (``mono="first"``) or the
mean of the channels, samples presented before time 0 (codec priming) dropped, the encoder's padding past the
stream's duration cut. A file that cannot be used never fails the batch: its status says why and its waveform
is empty. Resample with ``fn.audio_resample(audio, in_rate=rate, out_rate=...)``.

Outputs: audio (float32, 1-D), rate (float32 scalar, Hz; 0 when nothing decoded), status (int32 scalar:
0 ok, 1 no audio stream, 2 undecodable, 3 empty), times (float64 [2]: the presentation time in seconds of
the first output sample, and the audio stream's start time; NaN when unknown), message (uint8 bytes of UTF-8
text: why, when the status is not 0).)")
    .NumInput(1)
    .InputDox(0, "encoded", "1-D TensorList of uint8",
              "The bytes of a media file, one file per sample (its path with ``from_path``).")
    .NumOutput(5)
    .OutputDType(0, DALI_FLOAT)
    .OutputNDim(0, 1)
    .OutputDType(1, DALI_FLOAT)
    .OutputNDim(1, 0)
    .OutputDType(2, DALI_INT32)
    .OutputNDim(2, 0)
    .OutputDType(3, DALI_FLOAT64)
    .OutputNDim(3, 1)
    .OutputDType(4, DALI_UINT8)
    .OutputNDim(4, 1)
    .AddOptionalArg("mono", R"(``"first"``: the first channel, as the original SoundNet; ``"mean"``: the
mean of the channels.)", std::string("first"))
    .AddOptionalArg("trim", R"(Drop samples presented before time 0 (codec priming) and the encoder's padding
past the stream's duration, as soundnet_fast.audio.load does. False keeps every decoded sample (output 3 then
says where the first one is presented).)", true)
    .AddOptionalArg("from_path", R"(Each input sample is the UTF-8 path of a file, not its bytes: FFmpeg reads the
file from disk in small blocks as it demuxes, so the encoded file is never held whole in memory (for files
larger than a batch's byte budget).)", false)
    .AddOptionalArg("min_samples", R"(Pad a shorter waveform (a failed file's empty one) with zeros to this length,
for operators that refuse empty input such as ``fn.filter``; the status still tells a failure.)", 0);
