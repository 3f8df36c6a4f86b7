// cunet._host: the Python face of kernels/host/conv2d.cpp (pybind11).
//
// Each op takes NumPy arrays and writes into an output the caller allocated (no allocation
// of outputs, no copies). The arguments are checked here, before any kernel runs, and a bad
// one raises ValueError naming the op, the argument, what it got and what was expected
// (TypeError for something that is not a NumPy array at all):
//
//   - dtype float32 exactly, in the machine's byte order. Nothing is converted: pybind11's
//     `forcecast` would silently turn a float64 input into a float32 copy (a gradient check
//     would lose its precision without notice) and cannot work for an output (the kernel
//     would write into a temporary copy);
//   - C-contiguous (a strided view would need a copy) and aligned to 4 bytes;
//   - the shapes of a valid 3x3 convolution, every dimension >= 1;
//   - outputs writable and not overlapping any input (the kernels read inputs while they
//     write outputs).
//
// The GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "conv2d.hpp"

namespace py = pybind11;
using cunet_host::index_t;

namespace {

std::string shape_of(const py::array& a) { return py::str(py::tuple(a.attr("shape"))).cast<std::string>(); }

std::string shape_str(std::initializer_list<index_t> dims) {
    std::string s = "(";
    size_t i = 0;
    for (index_t d : dims) s += std::to_string(d) + (++i < dims.size() ? ", " : (dims.size() == 1 ? "," : ""));
    return s + ")";
}

// One argument: a float32, C-contiguous, aligned NumPy array of `layout.size()` dimensions.
py::array checked(const char* op, const char* name, const py::object& obj, const std::vector<const char*>& layout,
                  bool output) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(op) + ": " + name + " must be a NumPy array, got " +
                             py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    py::array a = py::reinterpret_borrow<py::array>(obj);
    std::string dims;
    for (size_t i = 0; i < layout.size(); ++i) dims += std::string(i ? ", " : "") + layout[i];
    if (!py::isinstance<py::array_t<float>>(a))
        throw py::value_error(std::string(op) + ": " + name + " has dtype " + py::str(a.dtype()).cast<std::string>() +
                              "; expected float32 (the C++ kernels are float32 only, and convert nothing)");
    if (a.ndim() != py::ssize_t(layout.size()))
        throw py::value_error(std::string(op) + ": " + name + " must be [" + dims + "] (" +
                              std::to_string(layout.size()) + "-D), got shape " + shape_of(a));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(op) + ": " + name + " " + shape_of(a) +
                              " must be C-contiguous (got a strided view); copy it first (np.ascontiguousarray)");
    if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(float) != 0)
        throw py::value_error(std::string(op) + ": " + name + " is not aligned to 4 bytes; copy it first");
    for (py::ssize_t i = 0; i < a.ndim(); ++i)
        if (a.shape(i) < 1)
            throw py::value_error(std::string(op) + ": " + name + " " + shape_of(a) + " is empty (" + layout[i] +
                                  " = " + std::to_string(a.shape(i)) + "); every dimension must be >= 1");
    if (output && !a.writeable())
        throw py::value_error(std::string(op) + ": " + name + " is read-only, but the op writes into it");
    return a;
}

void expect_shape(const char* op, const char* name, const py::array& a, std::initializer_list<index_t> expected,
                  const std::string& because) {
    bool same = true;
    size_t i = 0;
    for (index_t d : expected) same = same && a.shape(py::ssize_t(i++)) == d;
    if (!same)
        throw py::value_error(std::string(op) + ": " + name + " has shape " + shape_of(a) + "; expected " +
                              shape_str(expected) + " " + because);
}

// No output may share a byte with an input or with another output.
void expect_disjoint(const char* op, const std::vector<std::pair<const char*, const py::array*>>& outputs,
                     const std::vector<std::pair<const char*, const py::array*>>& all) {
    for (const auto& [out_name, out] : outputs) {
        const auto* o0 = static_cast<const char*>(out->data());
        const auto* o1 = o0 + out->nbytes();
        for (const auto& [name, a] : all) {
            if (a == out) continue;
            const auto* a0 = static_cast<const char*>(a->data());
            const auto* a1 = a0 + a->nbytes();
            if (o0 < a1 && a0 < o1)
                throw py::value_error(std::string(op) + ": " + out_name + " overlaps " + name +
                                      " in memory; the output must be a separate array");
        }
    }
}

const float* in_ptr(const py::array& a) { return static_cast<const float*>(a.data()); }
float* out_ptr(py::array& a) { return static_cast<float*>(a.mutable_data()); }

void forward(const py::object& x_, const py::object& w_, const py::object& b_, const py::object& y_, bool relu,
             bool winograd) {
    const char* op = "conv3x3_forward";
    py::array x = checked(op, "x", x_, {"N", "C", "H", "W"}, false);
    py::array w = checked(op, "w", w_, {"K", "C", "3", "3"}, false);
    py::array b = checked(op, "b", b_, {"K"}, false);
    py::array y = checked(op, "y", y_, {"N", "K", "H-2", "W-2"}, true);
    const index_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3), K = w.shape(0);
    if (H < 3 || W < 3)
        throw py::value_error(std::string(op) + ": x " + shape_of(x) +
                              " is smaller than the 3x3 filter; the output would be empty (need H, W >= 3)");
    expect_shape(op, "w", w, {K, C, 3, 3}, "= [K, C, 3, 3] for x " + shape_of(x) + " (C = x.shape[1]) and a 3x3 filter");
    expect_shape(op, "b", b, {K}, "= [K] for w " + shape_of(w));
    expect_shape(op, "y", y, {N, K, H - 2, W - 2}, "= [N, K, H-2, W-2] for x " + shape_of(x) + " and w " + shape_of(w));
    expect_disjoint(op, {{"y", &y}}, {{"x", &x}, {"w", &w}, {"b", &b}, {"y", &y}});
    const float *xp = in_ptr(x), *wp = in_ptr(w), *bp = in_ptr(b);
    float* yp = out_ptr(y);
    py::gil_scoped_release release;
    cunet_host::conv3x3_forward(xp, wp, bp, yp, N, C, H, W, K, relu, winograd);
}

void backward_input(const py::object& dy_, const py::object& w_, const py::object& dx_, bool winograd) {
    const char* op = "conv3x3_backward_input";
    py::array dy = checked(op, "dy", dy_, {"N", "K", "OH", "OW"}, false);
    py::array w = checked(op, "w", w_, {"K", "C", "3", "3"}, false);
    py::array dx = checked(op, "dx", dx_, {"N", "C", "OH+2", "OW+2"}, true);
    const index_t N = dy.shape(0), K = dy.shape(1), OH = dy.shape(2), OW = dy.shape(3), C = w.shape(1);
    expect_shape(op, "w", w, {K, C, 3, 3}, "= [K, C, 3, 3] for dy " + shape_of(dy) + " (K = dy.shape[1])");
    expect_shape(op, "dx", dx, {N, C, OH + 2, OW + 2},
                 "= [N, C, OH+2, OW+2] for dy " + shape_of(dy) + " and w " + shape_of(w));
    expect_disjoint(op, {{"dx", &dx}}, {{"dy", &dy}, {"w", &w}, {"dx", &dx}});
    const float *dyp = in_ptr(dy), *wp = in_ptr(w);
    float* dxp = out_ptr(dx);
    py::gil_scoped_release release;
    cunet_host::conv3x3_backward_input(dyp, wp, dxp, N, K, OH, OW, C, winograd);
}

void backward_params(const py::object& x_, const py::object& dy_, const py::object& dw_, const py::object& db_,
                     bool winograd) {
    const char* op = "conv3x3_backward_params";
    py::array x = checked(op, "x", x_, {"N", "C", "H", "W"}, false);
    py::array dy = checked(op, "dy", dy_, {"N", "K", "H-2", "W-2"}, false);
    py::array dw = checked(op, "dw", dw_, {"K", "C", "3", "3"}, true);
    py::array db = checked(op, "db", db_, {"K"}, true);
    const index_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3), K = dy.shape(1);
    if (H < 3 || W < 3)
        throw py::value_error(std::string(op) + ": x " + shape_of(x) + " is smaller than the 3x3 filter (need H, W >= 3)");
    expect_shape(op, "dy", dy, {N, K, H - 2, W - 2}, "= [N, K, H-2, W-2] for x " + shape_of(x) + " and a 3x3 filter");
    expect_shape(op, "dw", dw, {K, C, 3, 3}, "= [K, C, 3, 3] for x " + shape_of(x) + " and dy " + shape_of(dy));
    expect_shape(op, "db", db, {K}, "= [K] for dy " + shape_of(dy));
    expect_disjoint(op, {{"dw", &dw}, {"db", &db}}, {{"x", &x}, {"dy", &dy}, {"dw", &dw}, {"db", &db}});
    const float *xp = in_ptr(x), *dyp = in_ptr(dy);
    float *dwp = out_ptr(dw), *dbp = out_ptr(db);
    py::gil_scoped_release release;
    cunet_host::conv3x3_backward_params(xp, dyp, dwp, dbp, N, C, H, W, K, winograd);
}

void upconv_forward(const py::object& x_, const py::object& w_, const py::object& b_, const py::object& y_) {
    const char* op = "upconv2x2_forward";
    py::array x = checked(op, "x", x_, {"N", "C", "H", "W"}, false);
    py::array w = checked(op, "w", w_, {"C", "K", "2", "2"}, false);
    py::array b = checked(op, "b", b_, {"K"}, false);
    py::array y = checked(op, "y", y_, {"N", "K", "2H", "2W"}, true);
    const index_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3), K = w.shape(1);
    expect_shape(op, "w", w, {C, K, 2, 2}, "= [C, K, 2, 2] for x " + shape_of(x) + " (C = x.shape[1])");
    expect_shape(op, "b", b, {K}, "= [K] for w " + shape_of(w));
    expect_shape(op, "y", y, {N, K, 2 * H, 2 * W}, "= [N, K, 2H, 2W] for x " + shape_of(x) + " and w " + shape_of(w));
    expect_disjoint(op, {{"y", &y}}, {{"x", &x}, {"w", &w}, {"b", &b}, {"y", &y}});
    const float *xp = in_ptr(x), *wp = in_ptr(w), *bp = in_ptr(b);
    float* yp = out_ptr(y);
    py::gil_scoped_release release;
    cunet_host::upconv2x2_forward(xp, wp, bp, yp, N, C, H, W, K);
}

void upconv_backward_input(const py::object& dy_, const py::object& w_, const py::object& dx_) {
    const char* op = "upconv2x2_backward_input";
    py::array dy = checked(op, "dy", dy_, {"N", "K", "2H", "2W"}, false);
    py::array w = checked(op, "w", w_, {"C", "K", "2", "2"}, false);
    py::array dx = checked(op, "dx", dx_, {"N", "C", "H", "W"}, true);
    const index_t N = dy.shape(0), K = dy.shape(1), C = w.shape(0);
    if (dy.shape(2) % 2 || dy.shape(3) % 2)
        throw py::value_error(std::string(op) + ": dy " + shape_of(dy) + " must have an even height and width (2H, 2W)");
    const index_t H = dy.shape(2) / 2, W = dy.shape(3) / 2;
    expect_shape(op, "w", w, {C, K, 2, 2}, "= [C, K, 2, 2] for dy " + shape_of(dy) + " (K = dy.shape[1])");
    expect_shape(op, "dx", dx, {N, C, H, W}, "= [N, C, H, W] for dy " + shape_of(dy) + " and w " + shape_of(w));
    expect_disjoint(op, {{"dx", &dx}}, {{"dy", &dy}, {"w", &w}, {"dx", &dx}});
    const float *dyp = in_ptr(dy), *wp = in_ptr(w);
    float* dxp = out_ptr(dx);
    py::gil_scoped_release release;
    cunet_host::upconv2x2_backward_input(dyp, wp, dxp, N, K, H, W, C);
}

void upconv_backward_params(const py::object& x_, const py::object& dy_, const py::object& dw_, const py::object& db_) {
    const char* op = "upconv2x2_backward_params";
    py::array x = checked(op, "x", x_, {"N", "C", "H", "W"}, false);
    py::array dy = checked(op, "dy", dy_, {"N", "K", "2H", "2W"}, false);
    py::array dw = checked(op, "dw", dw_, {"C", "K", "2", "2"}, true);
    py::array db = checked(op, "db", db_, {"K"}, true);
    const index_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3), K = dy.shape(1);
    expect_shape(op, "dy", dy, {N, K, 2 * H, 2 * W}, "= [N, K, 2H, 2W] for x " + shape_of(x));
    expect_shape(op, "dw", dw, {C, K, 2, 2}, "= [C, K, 2, 2] for x " + shape_of(x) + " and dy " + shape_of(dy));
    expect_shape(op, "db", db, {K}, "= [K] for dy " + shape_of(dy));
    expect_disjoint(op, {{"dw", &dw}, {"db", &db}}, {{"x", &x}, {"dy", &dy}, {"dw", &dw}, {"db", &db}});
    const float *xp = in_ptr(x), *dyp = in_ptr(dy);
    float *dwp = out_ptr(dw), *dbp = out_ptr(db);
    py::gil_scoped_release release;
    cunet_host::upconv2x2_backward_params(xp, dyp, dwp, dbp, N, C, H, W, K);
}

}  // namespace

PYBIND11_MODULE(_host, m) {
    m.doc() = "cunet's CPU kernels in C++ (kernels/host/): the 3x3 convolutions (float32, NCHW, valid, stride 1) "
              "and the 2x2 up-convolution.\n\n"
              "Each op writes into a preallocated output and returns None. cunet/cpu/conv2d.py calls them.";

    m.def("conv3x3_forward", &forward, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"), py::arg("relu") = false,
          py::arg("winograd") = false,
          "y[N,K,H-2,W-2] = b + the valid 3x3 cross-correlation of x[N,C,H,W] with w[K,C,3,3]; then max(., 0) if "
          "relu (NaN -> 0, as cunet's other paths). winograd: by Winograd F(4x4, 3x3) (4x fewer multiplies) "
          "instead of the direct sum.");
    m.def("conv3x3_backward_input", &backward_input, py::arg("dy"), py::arg("w"), py::arg("dx"),
          py::arg("winograd") = false,
          "dx[N,C,OH+2,OW+2] = the gradient of conv3x3_forward's x: dy[N,K,OH,OW] zero-padded by 2, correlated "
          "with w[K,C,3,3] flipped and transposed (winograd: by Winograd F(4x4, 3x3), as the forward).");
    m.def("conv3x3_backward_params", &backward_params, py::arg("x"), py::arg("dy"), py::arg("dw"), py::arg("db"),
          py::arg("winograd") = false,
          "dw[K,C,3,3] = sum over n and pixels of dy times the shifted x; db[K] = the sum of dy. Bitwise "
          "independent of the number of threads. winograd: by Winograd F(4x4, 3x3), as the forward.");

    m.def("upconv2x2_forward", &upconv_forward, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("y"),
          "y[N,K,2H,2W] = the 2x2, stride-2 up-convolution of x[N,C,H,W] with w[C,K,2,2], plus b[K].");
    m.def("upconv2x2_backward_input", &upconv_backward_input, py::arg("dy"), py::arg("w"), py::arg("dx"),
          "dx[N,C,H,W] = the gradient of upconv2x2_forward's x: each 2x2 block of dy[N,K,2H,2W] times w[C,K,2,2], "
          "summed over K and the block.");
    m.def("upconv2x2_backward_params", &upconv_backward_params, py::arg("x"), py::arg("dy"), py::arg("dw"),
          py::arg("db"),
          "dw[C,K,2,2] = sum over n and pixels of x times dy's 2x2 blocks; db[K] = the sum of dy. Bitwise "
          "independent of the number of threads.");
    m.def("simd_level", [] { return std::string(cunet_host::isa_name(cunet_host::cpu_isa())); },
          "Which compiled version of the kernels the ops run: 'avx512' (AVX-512F), 'avx2' (AVX2 + FMA: the "
          "x86-64-v3 level) or 'generic' (the x86-64 baseline, or any non-x86 CPU). The best one this CPU "
          "supports, unless _set_simd_level chose another.");
    m.def("_simd_level_by_cpu_features",
          [] { return std::string(cunet_host::isa_name(cunet_host::isa_by_cpu_features())); },
          "The best version this CPU supports, by __builtin_cpu_supports (what simd_level() starts as).");
    m.def(
        "_set_simd_level",
        [](const std::string& name) {
            for (auto isa : {cunet_host::Isa::avx512, cunet_host::Isa::avx2, cunet_host::Isa::generic}) {
                if (name != cunet_host::isa_name(isa)) continue;
                if (!cunet_host::set_isa(isa))
                    throw py::value_error("_set_simd_level: this CPU cannot run the '" + name + "' version");
                return;
            }
            throw py::value_error("_set_simd_level: level must be 'avx512', 'avx2' or 'generic', got '" + name + "'");
        },
        py::arg("level"),
        "Run the given version from now on (for tests and benchmarks: each version can be checked on one machine).");
    m.def(
        "_cpu_supports",
        [](const std::string& name) {
            for (auto isa : {cunet_host::Isa::avx512, cunet_host::Isa::avx2, cunet_host::Isa::generic})
                if (name == cunet_host::isa_name(isa)) return cunet_host::cpu_supports(isa);
            throw py::value_error("_cpu_supports: level must be 'avx512', 'avx2' or 'generic', got '" + name + "'");
        },
        py::arg("level"), "Whether this CPU can run the given version.");
    m.attr("SIMD_LEVELS") = py::make_tuple("avx512", "avx2", "generic");
    m.def(
        "tile_geometry",
        [] {
            const auto g = cunet_host::geometry(cunet_host::cpu_isa());
            py::dict d;
            d["forward_filters"] = g.forward_filters;
            d["forward_pixels"] = g.forward_pixels;
            d["wgrad_filters"] = g.wgrad_filters;
            d["wgrad_lanes"] = g.wgrad_pixels;
            d["upconv_grad_channels"] = g.upconv_grad_channels;
            return d;
        },
        "The register tile of the version simd_level() names (kernels/host/conv2d.cpp explains them).");
    m.def(
        "fma_peak_gflops",
        [](std::int64_t iterations) {
            if (iterations < 1)
                throw py::value_error("fma_peak_gflops: iterations must be >= 1, got " + std::to_string(iterations));
            py::gil_scoped_release release;
            return cunet_host::fma_peak_gflops(iterations);
        },
        py::arg("iterations"),
        "GFLOP/s of register-only FMAs on every OpenMP thread, in simd_level()'s version: the ceiling "
        "the convolutions are measured against. Each thread runs `iterations` rounds (~10^8: a few "
        "tenths of a second).");
    m.def("max_threads", &cunet_host::max_threads, "OpenMP threads the next parallel loop may use.");
    m.def(
        "set_num_threads",
        [](int n) {
            if (n < 1) throw py::value_error("set_num_threads: n must be >= 1, got " + std::to_string(n));
            cunet_host::set_num_threads(n);
        },
        py::arg("n"), "omp_set_num_threads(n) for the calling thread's later ops.");
    m.def("_last_team_size", &cunet_host::last_team_size,
          "The most threads any loop of the last op ran on (1 for an op too small to split); for the tests.");
    m.def("_scratch_peak_bytes", &cunet_host::scratch_peak_bytes,
          "The most temporary memory the last op held at once, in bytes; for the tests.");
    m.def(
        "_set_winograd_chunk_bytes",
        [](index_t bytes) {
            if (bytes < 1) throw py::value_error("_set_winograd_chunk_bytes: bytes must be >= 1, got " + std::to_string(bytes));
            return cunet_host::set_winograd_chunk_bytes(bytes);
        },
        py::arg("bytes"),
        "Bytes a Winograd chunk's transformed tiles may take from now on (default 32 MiB); returns the "
        "previous budget. For the tests: a small budget splits a small layer into many chunks.");
#ifdef CUNET_HOST_SANITIZE
    m.attr("SANITIZE") = true;
    m.def(
        "_sanitizer_selftest",
        [](const std::string& kind) {
            if (kind == "heap-buffer-overflow") return cunet_host::sanitizer_selftest(1);
            if (kind == "signed-integer-overflow") return cunet_host::sanitizer_selftest(2);
            throw py::value_error("_sanitizer_selftest: kind must be 'heap-buffer-overflow' or "
                                  "'signed-integer-overflow', got '" + kind + "'");
        },
        py::arg("kind"), "Commit a planted error (sanitizer builds only), to prove the sanitizers report it.");
#else
    m.attr("SANITIZE") = false;
#endif
}
