// torchqat_infer: runs a saved torchqat INT8 TorchScript model in a plain libtorch program.
//
//   torchqat_infer MODEL.pt INPUT.pt [OUTPUT.pt] [--threads N] [--repeat N] [--device D]
//
// MODEL.pt   torch.jit.save(torch.jit.script(tq.convert(qat_model)), "MODEL.pt")
//            (or tq.export_torchscript); its torchqat operators and packed weights need this
//            program to link torchqat::torchqat (see CMakeLists.txt).
// INPUT.pt   torch.save(x, "INPUT.pt") of a tensor, or of a tuple of tensors for a forward
//            with several arguments.
// OUTPUT.pt  where forward's result goes, readable with torch.load(..., weights_only=True).
//            Always CPU tensors, whichever device ran the model.
// --device   cpu (default) or cuda[:N]: the model is loaded onto that device (its packed
//            weights lay themselves out there on first use) and the inputs are moved there.
//
// Prints each output's shape, dtype and checksums (its sum and a 64-bit hash of its bytes), and
// with --repeat the median latency. Exit status: 0 on success, 1 on an error (message on
// stderr), 2 on bad usage.
#include <torch/cuda.h>    // torch::cuda::is_available / synchronize (--device cuda)
#include <torch/script.h>  // torch::jit::load, pickle_load / pickle_save

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <iterator>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr const char* kUsage =
    "usage: torchqat_infer MODEL.pt INPUT.pt [OUTPUT.pt] [--threads N] [--repeat N] "
    "[--device D]\n"
    "  MODEL.pt   a TorchScript model saved with torch.jit.save (e.g. a converted torchqat model)\n"
    "  INPUT.pt   torch.save of a tensor, or of a tuple of tensors (one per forward argument)\n"
    "  OUTPUT.pt  where to write forward's result with torch::jit::pickle_save (torch.load reads it)\n"
    "  --threads  intra-op threads (at::set_num_threads); default: libtorch's choice\n"
    "  --repeat   run forward N more times and print the median latency\n"
    "  --device   cpu (default) or cuda[:N]: where the model and its inputs go\n";

struct Args {
  std::string model;
  std::string input;
  std::optional<std::string> output;
  std::optional<int> threads;
  int repeat = 0;
  c10::Device device = c10::Device(c10::kCPU);
};

class UsageError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

int parse_positive(const std::string& flag, const char* value) {
  if (value == nullptr) throw UsageError(flag + " needs a value");
  char* end = nullptr;
  const long n = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || n < 1 || n > 1'000'000) {
    throw UsageError(flag + " must be a positive integer, got '" + value + "'");
  }
  return static_cast<int>(n);
}

c10::Device parse_device(const char* value) {
  if (value == nullptr) throw UsageError("--device needs a value");
  std::optional<c10::Device> device;
  try {
    device = c10::Device(value);
  } catch (const c10::Error&) {
  }
  if (!device || !(device->is_cpu() || device->is_cuda())) {
    throw UsageError(std::string("--device must be cpu, cuda or cuda:N, got '") + value + "'");
  }
  return *device;
}

Args parse_args(int argc, char** argv) {
  Args args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--threads") {
      args.threads = parse_positive(arg, i + 1 < argc ? argv[++i] : nullptr);
    } else if (arg == "--repeat") {
      args.repeat = parse_positive(arg, i + 1 < argc ? argv[++i] : nullptr);
    } else if (arg == "--device") {
      args.device = parse_device(i + 1 < argc ? argv[++i] : nullptr);
    } else if (arg.rfind("--", 0) == 0) {
      throw UsageError("unknown option '" + arg + "'");
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 2 || positional.size() > 3) {
    throw UsageError("expected MODEL.pt INPUT.pt [OUTPUT.pt], got " +
                     std::to_string(positional.size()) + " file arguments");
  }
  args.model = positional[0];
  args.input = positional[1];
  if (positional.size() == 3) args.output = positional[2];
  return args;
}

std::vector<char> read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(std::string("cannot open ") + what + " '" + path + "'");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The operators live in libtorchqat, which registers them when it is loaded. A program that
// does not keep it linked would otherwise only learn it from torch::jit::load's
// "Unknown builtin op: torchqat::..." when it parses the model's code.
void require_torchqat_operators() {
  if (!c10::Dispatcher::singleton().findSchema({"torchqat::int8_linear", ""}).has_value()) {
    throw std::runtime_error(
        "the torchqat operators are not registered: link the program with torchqat::torchqat "
        "(find_package(torchqat)), which keeps libtorchqat linked although no symbol of it is "
        "called (a plain -ltorchqat is dropped by linkers running with --as-needed)");
  }
}

torch::jit::Module load_model(const std::string& path, const c10::Device& device) {
  // torch::jit::load's own message for a missing file is about a zip reader; say it plainly.
  if (!std::ifstream(path, std::ios::binary)) {
    throw std::runtime_error("cannot open model '" + path + "'");
  }
  try {
    torch::jit::Module module = torch::jit::load(path, device);
    module.eval();
    return module;
  } catch (const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    // The zip reader's errors mean the file is no TorchScript archive; others (a kernel this CPU
    // lacks, TORCHQAT_INT8_KERNEL naming no kernel, ...) speak for themselves.
    const bool not_an_archive = what.find("PytorchStreamReader") != std::string::npos;
    throw std::runtime_error("cannot load model '" + path + "'" +
                             (not_an_archive ? " (expected a file saved with torch.jit.save)" : "") +
                             ": " + what);
  } catch (const std::exception& e) {
    // torch::jit::ErrorReport (code the model needs but this program lacks, e.g. the operators
    // of another extension library) is no c10::Error.
    throw std::runtime_error("cannot load model '" + path + "': " + e.what());
  }
}

std::vector<torch::jit::IValue> load_inputs(const std::string& path, const c10::Device& device) {
  const std::vector<char> bytes = read_file(path, "input");
  torch::jit::IValue value;
  try {
    value = torch::jit::pickle_load(bytes);
  } catch (const c10::Error& e) {
    throw std::runtime_error("cannot read input '" + path +
                             "' (expected torch.save of a tensor or a tuple of tensors): " +
                             e.what_without_backtrace());
  }
  if (value.isTensor()) return {value.toTensor().to(device)};
  if (value.isTuple()) {
    std::vector<torch::jit::IValue> inputs;
    for (const auto& element : value.toTupleRef().elements()) {
      if (!element.isTensor()) {
        throw std::runtime_error("input '" + path + "': a tuple element is a " +
                                 element.tagKind() + ", expected tensors only");
      }
      inputs.push_back(element.toTensor().to(device));
    }
    return inputs;
  }
  throw std::runtime_error("input '" + path + "' holds a " + value.tagKind() +
                           ", expected a tensor or a tuple of tensors");
}

// FNV-1a over the tensor's bytes in contiguous order: equal hashes mean equal bits, which is
// what comparing with Python's output of the same model on the same machine should give.
uint64_t fnv1a(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  const auto* p = static_cast<const unsigned char*>(c.data_ptr());
  const size_t n = c.numel() * c.element_size();
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

// The output with every tensor copied to the CPU (checksums and pickle_save read host memory).
torch::jit::IValue to_cpu(const torch::jit::IValue& v) {
  if (v.isTensor()) return v.toTensor().cpu();
  if (v.isTuple()) {
    std::vector<torch::jit::IValue> elements;
    for (const auto& e : v.toTupleRef().elements()) elements.push_back(to_cpu(e));
    return c10::ivalue::Tuple::create(std::move(elements));
  }
  if (v.isTensorList()) {
    c10::List<at::Tensor> list;
    for (const at::Tensor& t : v.toTensorVector()) list.push_back(t.cpu());
    return list;
  }
  return v;  // no tensor, or a container kind this program does not move: left as it is
}

void collect_tensors(const torch::jit::IValue& v, std::vector<at::Tensor>& out) {
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isTuple()) {
    for (const auto& e : v.toTupleRef().elements()) collect_tensors(e, out);
  } else if (v.isList()) {
    for (const auto& e : v.toListRef()) collect_tensors(e, out);
  } else if (v.isGenericDict()) {
    for (const auto& kv : v.toGenericDict()) collect_tensors(kv.value(), out);
  }
}

void describe(const torch::jit::IValue& output) {
  std::vector<at::Tensor> tensors;
  collect_tensors(output, tensors);
  if (tensors.empty()) std::cout << "output: " << output.tagKind() << " (no tensors)\n";
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    std::ostringstream hash;
    hash << std::hex << fnv1a(t);
    std::cout << "output[" << i << "]: shape " << t.sizes() << " " << t.dtype()
              << " sum=" << std::setprecision(17) << t.to(torch::kDouble).sum().item<double>()
              << " fnv1a64=0x" << hash.str() << "\n";
  }
}

int run(const Args& args) {
  require_torchqat_operators();
  if (args.threads) at::set_num_threads(*args.threads);
  const bool cuda = args.device.is_cuda();
  if (cuda && !torch::cuda::is_available()) {
    throw std::runtime_error("--device " + args.device.str() +
                             ": this libtorch sees no CUDA device (a CPU-only build, or no GPU)");
  }

  torch::jit::Module model = load_model(args.model, args.device);
  const std::vector<torch::jit::IValue> inputs = load_inputs(args.input, args.device);

  // Inference only: no autograd graph, and tensors may skip version counting.
  c10::InferenceMode guard;
  torch::jit::IValue output;
  try {
    output = to_cpu(model.forward(inputs));
  } catch (const c10::Error& e) {
    throw std::runtime_error(std::string("forward failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("forward failed: ") + e.what());
  }
  std::cout << "model: " << args.model << " (" << inputs.size() << " input"
            << (inputs.size() == 1 ? "" : "s") << ", " << at::get_num_threads()
            << " threads, device " << args.device << ")\n";
  describe(output);

  if (args.repeat > 0) {
    std::vector<double> ms;
    for (int i = 0; i < args.repeat; ++i) {
      const auto start = std::chrono::steady_clock::now();
      model.forward(inputs);
      if (cuda) torch::cuda::synchronize(args.device.index());  // the kernels run asynchronously
      ms.push_back(std::chrono::duration<double, std::milli>(
                       std::chrono::steady_clock::now() - start)
                       .count());
    }
    std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
    std::cout << "median latency over " << args.repeat << " runs: " << std::setprecision(4)
              << ms[ms.size() / 2] << " ms\n";
  }

  if (args.output) {
    const std::vector<char> bytes = torch::jit::pickle_save(output);
    std::ofstream out(*args.output, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write output '" + *args.output + "'");
    std::cout << "wrote " << *args.output << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "torchqat_infer: " << e.what() << "\n" << kUsage;
    return 2;
  }
  try {
    return run(args);
  } catch (const std::exception& e) {
    std::cerr << "torchqat_infer: " << e.what() << "\n";
    return 1;
  }
}
