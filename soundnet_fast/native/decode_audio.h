// Decode the first audio stream of an in-memory media file with the system's FFmpeg (no DALI types here, so
// the decoder is testable on its own). Semantics: soundnet_fast/audio.py's load(), before its resampling
// (docs/design.md#the-native-dali-audio-operator).
#ifndef SOUNDNET_FAST_NATIVE_DECODE_AUDIO_H_
#define SOUNDNET_FAST_NATIVE_DECODE_AUDIO_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace soundnet_fast {

// Per-sample status of the operator; soundnet_fast/prepare/audio_dali.py mirrors these numbers.
enum Status : int32_t {
  kOk = 0,
  kNoAudio = 1,     // a media file without an audio stream
  kUndecodable = 2,  // not a media file, no decoder for the codec, or nothing decoded before an error
  kEmpty = 3,       // 0 bytes in, or an audio stream that decoded to no samples
};

enum class Mono { kFirst, kMean };

struct DecodeOptions {
  Mono mono = Mono::kFirst;
  // true: drop samples presented before time 0 (codec priming) and a small excess past the stream's duration
  // (the encoder's last-frame padding), as audio.load() does. false: every decoded sample, first_time tells
  // where it starts (prepare places it on the video's timeline itself).
  bool trim = true;
};

struct DecodeResult {
  std::vector<float> samples;  // mono float32 at `rate`, in [-1, 1] for integer formats (floats pass as is)
  float rate = 0.f;            // the decoded frames' sample rate (Hz); 0 when nothing decoded
  int32_t status = kUndecodable;
  double first_time = 0.0;     // presentation time (s) of samples[0] on the stream's timeline; NaN if unknown
  double stream_start = 0.0;   // the audio stream's start_time (s); NaN if the container gives none
  std::string message;         // why, when status != kOk; a damaged tail that was cut off, when kOk
};

// Never reads outside [data, data + size); never throws (allocation failures become kUndecodable).
DecodeResult DecodeAudio(const uint8_t *data, size_t size, const DecodeOptions &options);

// The same from a file on disk, which FFmpeg reads in small blocks as it demuxes: the encoded file is never held
// whole in memory (the path for files larger than a batch's byte cap). Never throws.
DecodeResult DecodeAudioFile(const std::string &path, const DecodeOptions &options);

}  // namespace soundnet_fast

#endif  // SOUNDNET_FAST_NATIVE_DECODE_AUDIO_H_
