// The fast runner's harness: a batch of images through the Verilated ROM build of the
// accelerator (slimnfu_accel), with no host work per clock beyond toggling the clock.
//
// Usage: harness IN OUT. IN and OUT are the binary files slimnfu/sim/fastsim.py writes and
// reads (its docstring is their definition; every integer little-endian). Per image the
// harness does what slimnfu/sim/tb_accel.py does through cocotb, on the same clock edges:
// reset (two cycles), the image into NBin through img_*, start, then either a free run to
// done or, with the "layers" flag, a pause after every layer to note the cycles and
// engine_cycles counters and read the layer's NBout words; then the counters and the logits'
// words. Inputs change after the falling edge and are sampled on the rising one.
//
// harness_config.h (written beside this file by fastsim.py) defines SNFU_COUNTERS(X), the
// accelerator's counter ports in the order the output file lists them.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "Vaccel.h"
#include "harness_config.h"
#include "verilated.h"

namespace {

// A port of up to 64 bits is an integer; a wider one is a VlWide of 32-bit words.
template <typename T>
void put(T& port, const uint32_t* limbs, size_t n) {
    uint64_t v = n > 0 ? limbs[0] : 0;
    if (n > 1) v |= uint64_t(limbs[1]) << 32;
    port = T(v);
}

template <std::size_t N>
void put(VlWide<N>& port, const uint32_t* limbs, size_t n) {
    for (size_t i = 0; i < N; ++i) port[i] = i < n ? limbs[i] : 0;
}

template <typename T>
void get(const T& port, uint32_t* limbs, size_t n) {
    uint64_t v = uint64_t(port);
    for (size_t i = 0; i < n; ++i) limbs[i] = i < 2 ? uint32_t(v >> (32 * i)) : 0;
}

template <std::size_t N>
void get(const VlWide<N>& port, uint32_t* limbs, size_t n) {
    for (size_t i = 0; i < n; ++i) limbs[i] = i < N ? port[i] : 0;
}

[[noreturn]] void fail(const char* what, const char* path) {
    std::fprintf(stderr, "harness: %s: %s\n", path, what);
    std::exit(2);
}

uint32_t read_u32(FILE* f, const char* path) {
    uint32_t v;
    if (std::fread(&v, 4, 1, f) != 1) fail("truncated", path);
    return v;
}

// Status of one image in the output file.
enum Status : uint32_t { OK = 0, TIMEOUT = 1, NO_DONE = 2 };

struct Sim {
    VerilatedContext ctx;
    std::unique_ptr<Vaccel> top;
    uint64_t budget = 0;  // cycles left before the image times out

    Sim() : top(new Vaccel(&ctx)) {
        top->clk = 0;
        top->eval();
    }

    void tick() {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
    }

    // Tick until ``signal`` is high; false when the image's cycle budget runs out first.
    template <typename F>
    bool wait(F signal) {
        while (!signal()) {
            if (budget == 0) return false;
            --budget;
            tick();
        }
        return true;
    }

    void read_nbout(uint32_t words, size_t limbs, uint32_t* out) {
        for (uint32_t a = 0; a < words; ++a) {
            top->rd_addr = a;
            for (int i = 0; i < SNFU_RD_LATENCY; ++i) tick();
            get(top->rd_data, out + a * limbs, limbs);
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s IN OUT\n", argv[0]);
        return 2;
    }
    const char* in_path = argv[1];
    const char* out_path = argv[2];
    FILE* in = std::fopen(in_path, "rb");
    if (!in) fail("cannot open", in_path);
    char magic[8];
    if (std::fread(magic, 1, 8, in) != 8 || std::memcmp(magic, "SNFUIN01", 8) != 0)
        fail("not a fast-runner input file (magic SNFUIN01)", in_path);
    const uint32_t n_images = read_u32(in, in_path);
    const uint32_t image_words = read_u32(in, in_path);
    const uint32_t in_limbs = read_u32(in, in_path);
    const uint32_t out_limbs = read_u32(in, in_path);
    const uint32_t n_layers = read_u32(in, in_path);
    const uint32_t layers_flag = read_u32(in, in_path);
    const uint32_t timeout = read_u32(in, in_path);
    const uint32_t logit_words = read_u32(in, in_path);
    std::vector<uint32_t> layer_words(n_layers);
    uint64_t layer_total = 0;
    for (auto& w : layer_words) {
        w = read_u32(in, in_path);
        layer_total += w;
    }
    std::vector<uint32_t> image(size_t(image_words) * in_limbs);

    FILE* out = std::fopen(out_path, "wb");
    if (!out) fail("cannot create", out_path);
    const char* names[] = {
#define SNFU_NAME(n) #n,
        SNFU_COUNTERS(SNFU_NAME)
#undef SNFU_NAME
    };
    const uint32_t n_counters = sizeof(names) / sizeof(names[0]);
    const uint32_t head[] = {n_images, n_counters, out_limbs, n_layers, layers_flag,
                             logit_words};
    std::fwrite("SNFUOUT1", 1, 8, out);
    std::fwrite(head, 4, sizeof(head) / 4, out);
    std::fwrite(layer_words.data(), 4, n_layers, out);

    Sim sim;
    Vaccel* top = sim.top.get();
    std::vector<uint64_t> counters(n_counters), marks(2 * size_t(n_layers));
    std::vector<uint32_t> logits(size_t(logit_words) * out_limbs);
    std::vector<uint32_t> layers(layers_flag ? layer_total * out_limbs : 0);
    for (uint32_t n = 0; n < n_images; ++n) {
        if (std::fread(image.data(), 4, image.size(), in) != image.size())
            fail("truncated image data", in_path);
        top->start = top->img_en = top->step = top->resume = 0;
        top->img_addr = top->rd_addr = 0;
        put(top->img_data, image.data(), 0);
        top->rst = 1;
        sim.tick();
        sim.tick();
        top->rst = 0;
        sim.tick();
        top->img_en = 1;
        for (uint32_t a = 0; a < image_words; ++a) {
            top->img_addr = a;
            put(top->img_data, image.data() + size_t(a) * in_limbs, in_limbs);
            sim.tick();
        }
        top->img_en = 0;
        top->step = layers_flag ? 1 : 0;
        top->start = 1;
        sim.tick();
        top->start = 0;
        sim.budget = timeout;
        Status status = OK;
        std::fill(marks.begin(), marks.end(), 0);
        std::fill(layers.begin(), layers.end(), 0);
        std::fill(logits.begin(), logits.end(), 0);
        if (layers_flag) {
            uint32_t* dst = layers.data();
            for (uint32_t i = 0; i < n_layers && status == OK; ++i) {
                if (!sim.wait([&] { return top->paused == 1; })) {
                    status = TIMEOUT;
                    break;
                }
                marks[2 * i] = uint64_t(top->cycles);
                marks[2 * i + 1] = uint64_t(top->engine_cycles);
                sim.read_nbout(layer_words[i], out_limbs, dst);
                dst += size_t(layer_words[i]) * out_limbs;
                top->resume = 1;
                sim.tick();
                top->resume = 0;
            }
            if (status == OK && top->done != 1) status = NO_DONE;
        } else if (!sim.wait([&] { return top->done == 1; })) {
            status = TIMEOUT;
        }
        size_t c = 0;
#define SNFU_READ(n) counters[c++] = uint64_t(top->n);
        SNFU_COUNTERS(SNFU_READ)
#undef SNFU_READ
        if (status == OK) sim.read_nbout(logit_words, out_limbs, logits.data());
        std::fwrite(&status, 4, 1, out);
        std::fwrite(counters.data(), 8, counters.size(), out);
        if (layers_flag) {
            std::fwrite(marks.data(), 8, marks.size(), out);
            std::fwrite(layers.data(), 4, layers.size(), out);
        }
        std::fwrite(logits.data(), 4, logits.size(), out);
    }
    if (std::fclose(out) != 0) fail("cannot write", out_path);
    std::fclose(in);
    top->final();
    return 0;
}
