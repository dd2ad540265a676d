// fn.soundnet_fast.antialias_taps: per sample rate, the taps of a linear-phase low-pass FIR that removes what
// a downsampling to `out_rate` would fold back (docs/design.md#the-native-dali-audio-operator).
//
// Why: DALI 2.4's fn.audio_resample interpolates with a sinc at the INPUT rate, so downsampling 44.1/48 kHz to
// 22,050 Hz keeps every tone above 11,025 Hz as an alias (measured: a 15 kHz tone at 48 kHz comes out at full
// amplitude). Filtering with these taps first (fn.filter, then fn.audio_resample) leaves resampling to DALI and
// matches soxr's high-quality resampler, which soundnet_fast.audio.load uses, to a correlation of 0.9999 on
// white noise.
//
// Design: Kaiser-windowed sinc (Oppenheim & Schafer, Discrete-Time Signal Processing, 3rd ed., sec. 7.6):
// passband edge kPassFraction x out_rate / 2 (soxr's "HQ" passband is 91.3% of the output's Nyquist), stopband
// edge out_rate / 2, kAttenuationDb of stopband attenuation: beta = 0.1102 (A - 8.7), length
// N = (A - 8) / (2.285 dw) + 1, rounded up to odd so the filter has a centre tap and no delay.
#include <algorithm>
#include <cmath>
#include <vector>

#include "dali/pipeline/operator/operator.h"

namespace soundnet_fast {
namespace {

constexpr double kPassFraction = 0.907;  // 10,000 Hz of 11,025
constexpr double kAttenuationDb = 80.0;
constexpr int kMaxTaps = 4095;  // a rate of ~850 kHz; higher rates get this many (a wider transition)

std::vector<float> LowPassTaps(double in_rate, double out_rate) {
  if (!(in_rate > out_rate) || !(out_rate > 0)) return {1.f};  // no downsampling: nothing folds back
  const double nyquist = out_rate / 2, pass = kPassFraction * nyquist;
  const double dw = 2 * M_PI * (nyquist - pass) / in_rate;
  int n = static_cast<int>(std::ceil((kAttenuationDb - 8) / (2.285 * dw))) + 1;
  n = std::min(n | 1, kMaxTaps);
  const double beta = 0.1102 * (kAttenuationDb - 8.7);
  const double fc = (pass + nyquist) / 2 / in_rate;  // cycles per input sample, mid-transition
  const double centre = (n - 1) / 2.0, i0_beta = std::cyl_bessel_i(0.0, beta);
  std::vector<double> h(n);
  double sum = 0;
  for (int k = 0; k < n; ++k) {
    const double x = k - centre, r = x / centre;
    const double sinc = x == 0 ? 2 * fc : std::sin(2 * M_PI * fc * x) / (M_PI * x);
    h[k] = sinc * std::cyl_bessel_i(0.0, beta * std::sqrt(std::max(0.0, 1 - r * r))) / i0_beta;
    sum += h[k];
  }
  std::vector<float> taps(n);
  for (int k = 0; k < n; ++k) taps[k] = static_cast<float>(h[k] / sum);  // unit gain at 0 Hz
  return taps;
}

class AntialiasTapsOp : public ::dali::Operator<::dali::CPUBackend> {
 public:
  explicit AntialiasTapsOp(const ::dali::OpSpec &spec)
      : ::dali::Operator<::dali::CPUBackend>(spec), out_rate_(spec.GetArgument<float>("out_rate")) {
    DALI_ENFORCE(out_rate_ > 0, "out_rate must be positive");
  }

  bool SetupImpl(std::vector<::dali::OutputDesc> &, const ::dali::Workspace &) override { return false; }

  void RunImpl(::dali::Workspace &ws) override {
    const auto &rate = ws.Input<::dali::CPUBackend>(0);
    DALI_ENFORCE(rate.type() == DALI_FLOAT && rate.sample_dim() == 0, "antialias_taps takes float32 scalar rates");
    const int n = rate.num_samples();
    std::vector<std::vector<float>> taps(n);
    ::dali::TensorListShape<> shape(n, 2);
    for (int i = 0; i < n; ++i) {
      taps[i] = LowPassTaps(*rate.tensor<float>(i), out_rate_);
      shape.set_tensor_shape(i, {1, static_cast<int64_t>(taps[i].size())});
    }
    auto &out = ws.Output<::dali::CPUBackend>(0);
    out.Resize(shape, DALI_FLOAT);
    for (int i = 0; i < n; ++i)
      std::copy(taps[i].begin(), taps[i].end(), out.mutable_tensor<float>(i));
  }

 private:
  float out_rate_;
};

}  // namespace
}  // namespace soundnet_fast

DALI_REGISTER_OPERATOR(soundnet_fast__AntialiasTaps, ::soundnet_fast::AntialiasTapsOp, ::dali::CPU);

DALI_SCHEMA(soundnet_fast__AntialiasTaps)
    .DocStr(R"(The taps of a linear-phase low-pass FIR for each input sample rate, shaped (1, N) for ``fn.filter``:
everything from ``out_rate / 2`` up attenuated by 80 dB, flat to 90.7% of it. A single tap of 1 when the rate
is not above ``out_rate``. Filter before ``fn.audio_resample``, which does not low-pass when it downsamples.)")
    .NumInput(1)
    .InputDox(0, "rate", "TensorList of float32 scalars", "Each sample's rate (Hz), e.g. decode_audio's second output.")
    .NumOutput(1)
    .OutputDType(0, DALI_FLOAT)
    .OutputNDim(0, 2)
    .AddArg("out_rate", "The rate (Hz) the signal will be resampled to.", DALI_FLOAT);
