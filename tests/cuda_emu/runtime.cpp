// The emulator's runtime: launch checks, the block scheduler and its fibers.
//
// A launch runs the blocks of its grid one at a time. A block's threads are fibers on one OS
// thread; a fiber runs until it reaches __syncthreads, a warp operation or its end, and the
// scheduler then picks the next one in the order of the current schedule. The scheduler checks
// each arrival: barriers reached by every thread at the same call site, warp operations whose
// masks name live lanes that all reach the same call, and no deadlock.
#include <cuda_emu.h>

#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <elf.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDA_EMU_ASAN 1
#else
#define CUDA_EMU_ASAN 0
#endif

#if !defined(__x86_64__) && !defined(CUDA_EMU_UCONTEXT)
#define CUDA_EMU_UCONTEXT 1
#endif
#if defined(CUDA_EMU_UCONTEXT)
#include <ucontext.h>
#endif

#if !defined(CUDA_EMU_UCONTEXT)
// cuda_emu_switch(save, load): saves the callee-saved registers on the current stack, stores
// the stack pointer in *save, switches to the stack at `load` and restores its registers.
extern "C" void cuda_emu_switch(void** save, void* load);
asm(R"(
  .text
  .p2align 4
  .globl cuda_emu_switch
  .hidden cuda_emu_switch
  .type cuda_emu_switch, @function
cuda_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cuda_emu_switch, .-cuda_emu_switch
)");
#endif

namespace cuda_emu {
namespace {

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr size_t kMaxSharedBytes = 48 * 1024;
constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kGuardBytes = 4096;

enum class Order { Forward, Reverse, Shuffle };

struct Schedule {
  Order order = Order::Forward;
  bool greedy = false;  // one warp runs as far as it can before the next one starts
  uint64_t seed = 0;
};

enum class State { Runnable, AtBarrier, AtWarpOp, Exited };

struct WarpOp {
  const char* name;
  bool shuffle;
  ShuffleKind kind;
  unsigned mask;
  int arg, width;
  size_t size;
  unsigned char value[16];
  void* result;
};

struct Fiber {
  char* stack = nullptr;  // lowest usable byte, above a guard page
#if defined(CUDA_EMU_UCONTEXT)
  ucontext_t context;
#else
  void* sp = nullptr;
#endif
  void* asan_fake_stack = nullptr;
  State state = State::Exited;
  unsigned linear = 0;
  uint3 idx{};
  Site site;
  WarpOp op{};
};

struct Run {
  LaunchSite where{};
  const Body* body = nullptr;
  dim3 grid, block;
  uint3 block_idx{};
  unsigned threads = 0, warps = 0;
  unsigned runnable = 0, at_barrier = 0, exited = 0;
  Fiber* current = nullptr;
  std::exception_ptr kernel_error;
  std::mt19937_64 rng;
};

std::mutex launch_lock;
Schedule schedule;
cudaDeviceProp properties = {"cuda_emu (emulated on the CPU)", 132, 1024, 32, kMaxSharedBytes};
std::string pending_error;  // the configuration error of the last launch, until it is checked
uint64_t launch_count = 0;
// Launches since the last set_schedule: seeds the shuffles, so a schedule replays the same
// orders from where it was set, whatever ran before.
uint64_t launches_since_schedule = 0;
std::vector<std::string> launched_kernels;  // the kernels' names since take_launched_kernels()
const char* const shuffle_names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync"};
bool asan_callback_set = false;
uint64_t switch_count = 0;

std::vector<Fiber> fibers;  // their stacks live as long as the process
bool stacks_dirty = false;  // a launch failed with fibers in the middle of the kernel
Run run;

#if defined(CUDA_EMU_UCONTEXT)
ucontext_t scheduler_context;
#else
void* scheduler_sp = nullptr;
#endif
const void* scheduler_stack_bottom = nullptr;
size_t scheduler_stack_size = 0;
void* scheduler_fake_stack = nullptr;

std::string describe(const Site& s) {
  std::ostringstream out;
  out << s.file_name() << ":" << s.line();
  return out.str();
}

std::string describe(const uint3& v) {
  std::ostringstream out;
  out << "(" << v.x << ", " << v.y << ", " << v.z << ")";
  return out.str();
}

std::string hex(unsigned v) {
  std::ostringstream out;
  out << "0x" << std::hex << v;
  return out.str();
}

bool same_site(const Site& a, const Site& b) {
  return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

// Raises the problem found in the running block as a c10::Error (a RuntimeError in Python).
[[noreturn]] void fail(const std::string& problem) {
  TORCH_CHECK(false, "cuda_emu: kernel ", run.where.kernel, " launched at ", run.where.file, ":", run.where.line,
              ", block ", describe(run.block_idx), " of grid ", describe({run.grid.x, run.grid.y, run.grid.z}),
              ", block size ", describe({run.block.x, run.block.y, run.block.z}), ": ", problem);
}

std::string thread_name(const Fiber& f) {
  std::ostringstream out;
  out << "thread " << describe(f.idx) << " (warp " << f.linear / 32 << ", lane " << f.linear % 32 << ")";
  return out.str();
}

#if CUDA_EMU_ASAN
// Printed after an AddressSanitizer report: which emulated thread made the bad access.
void report_emulated_thread(const char*) {
  if (run.current == nullptr) return;
  std::fprintf(stderr, "cuda_emu: the access above was made by kernel %s launched at %s:%d, block %s, %s\n",
               run.where.kernel, run.where.file, run.where.line, describe(run.block_idx).c_str(),
               thread_name(*run.current).c_str());
}
#endif

// ---- fibers ------------------------------------------------------------------------------

[[noreturn]] void fiber_main();

void allocate_stacks(unsigned count) {
  while (fibers.size() < count) {
    void* mem = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(mem != MAP_FAILED, "cuda_emu: could not map a fiber stack");
    mprotect(mem, kGuardBytes, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
    Fiber f;
    f.stack = static_cast<char*>(mem) + kGuardBytes;
    fibers.push_back(f);
  }
}

// Prepares fiber f to start the kernel body from the top of its stack.
void reset(Fiber& f) {
#if CUDA_EMU_ASAN
  // Frames that never returned (fiber_main's, or all of a fiber abandoned by a failed launch)
  // leave poisoned stack behind.
  __asan_unpoison_memory_region(stacks_dirty ? f.stack : f.stack + kStackBytes - 16384,
                                stacks_dirty ? kStackBytes : 16384);
#endif
#if defined(CUDA_EMU_UCONTEXT)
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, fiber_main, 0);
#else
  // The frame cuda_emu_switch pops: mxcsr/x87 control words, six registers, then the return
  // address fiber_main, above which sits a null "return address" of fiber_main itself.
  auto* top = reinterpret_cast<uint64_t*>(f.stack + kStackBytes);
  uint64_t* sp = top - 1;  // 8 below a 16-byte boundary at fiber_main's entry, as after a call
  *sp = 0;
  *--sp = reinterpret_cast<uint64_t>(&fiber_main);
  for (int i = 0; i < 6; ++i) *--sp = 0;
  uint32_t control[2] = {0, 0};
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(control[0]), "=m"(control[1]));
  uint64_t words;
  std::memcpy(&words, control, sizeof(words));
  *--sp = words;
  f.sp = sp;
#endif
  f.asan_fake_stack = nullptr;
}

// Scheduler -> fiber f; returns when f waits or ends.
void resume(Fiber& f) {
  run.current = &f;
  threadIdx = f.idx;
  ++switch_count;
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(&scheduler_fake_stack, f.stack, kStackBytes);
#endif
#if defined(CUDA_EMU_UCONTEXT)
  swapcontext(&scheduler_context, &f.context);
#else
  cuda_emu_switch(&scheduler_sp, f.sp);
#endif
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
  run.current = nullptr;
}

// Fiber -> scheduler.
void suspend(Fiber& f) {
#if CUDA_EMU_ASAN
  __sanitizer_start_switch_fiber(f.state == State::Exited ? nullptr : &f.asan_fake_stack, scheduler_stack_bottom,
                                 scheduler_stack_size);
#endif
#if defined(CUDA_EMU_UCONTEXT)
  swapcontext(&f.context, &scheduler_context);
#else
  cuda_emu_switch(&f.sp, scheduler_sp);
#endif
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, &scheduler_stack_bottom, &scheduler_stack_size);
#endif
}

[[noreturn]] void fiber_main() {
#if CUDA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack_bottom, &scheduler_stack_size);
#endif
  Fiber& f = *run.current;
  try {
    run.body->call(run.body->self);
  } catch (...) {
    if (!run.kernel_error) run.kernel_error = std::current_exception();
  }
  f.state = State::Exited;
  suspend(f);
  std::abort();  // an exited fiber is never resumed
}

Fiber& current_fiber(const char* what) {
  TORCH_CHECK(run.current != nullptr, "cuda_emu: ", what, " called outside an emulated kernel");
  return *run.current;
}

// ---- the checks at each arrival ----------------------------------------------------------

unsigned lanes_in_warp(unsigned warp) { return std::min(32u, run.threads - warp * 32); }

Fiber& lane_fiber(unsigned warp, unsigned lane) { return fibers[warp * 32 + lane]; }

void on_barrier(Fiber& f) {
  ++run.at_barrier;
  if (run.exited > 0) {
    for (unsigned t = 0; t < run.threads; ++t)
      if (fibers[t].state == State::Exited)
        fail(thread_name(f) + " waits at __syncthreads (" + describe(f.site) + ") but " + thread_name(fibers[t]) +
             " has exited: every thread of a block must reach each barrier");
  }
  if (run.at_barrier < run.threads) return;
  for (unsigned t = 0; t < run.threads; ++t)
    if (!same_site(fibers[t].site, fibers[0].site))
      fail("threads wait at different barriers: " + thread_name(fibers[0]) + " at __syncthreads (" +
           describe(fibers[0].site) + "), " + thread_name(fibers[t]) + " at __syncthreads (" +
           describe(fibers[t].site) + ")");
  for (unsigned t = 0; t < run.threads; ++t) fibers[t].state = State::Runnable;
  run.at_barrier = 0;
  run.runnable = run.threads;
}

// The lane whose value `lane` reads, or -1 when it keeps its own.
int source_lane(const WarpOp& op, int lane) {
  const int base = lane & ~(op.width - 1);
  int src = lane;
  switch (op.kind) {
    case ShuffleKind::Index:
      src = base + ((op.arg % op.width) + op.width) % op.width;
      break;
    case ShuffleKind::Up:
      src = lane - op.arg;
      if (src < base) src = lane;
      break;
    case ShuffleKind::Down:
      src = lane + op.arg;
      if (src >= base + op.width) src = lane;
      break;
    case ShuffleKind::Xor:
      src = lane ^ op.arg;
      if (src >= base + op.width || src >= 32 || src < 0) src = lane;
      break;
  }
  return src;
}

void on_warp_op(Fiber& f) {
  const unsigned warp = f.linear / 32, lane = f.linear % 32, lanes = lanes_in_warp(warp);
  const unsigned mask = f.op.mask;
  const unsigned existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
  const std::string call = std::string(f.op.name) + " (" + describe(f.site) + ") with mask " + hex(mask);
  if (!(mask >> lane & 1u)) fail(thread_name(f) + " calls " + call + ", which leaves out its own lane");
  if (mask & ~existing)
    fail(thread_name(f) + " calls " + call + ", which names lanes that do not exist (warp " + std::to_string(warp) +
         " has " + std::to_string(lanes) + " lanes)");
  if (f.op.shuffle && (f.op.width < 1 || f.op.width > 32 || (f.op.width & (f.op.width - 1)) != 0))
    fail(thread_name(f) + " calls " + call + " with width " + std::to_string(f.op.width) +
         ": it must be a power of two up to 32");
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const Fiber& other = lane_fiber(warp, l);
    if (other.state == State::Exited)
      fail(thread_name(f) + " calls " + call + ", which names lane " + std::to_string(l) + ", which has exited");
    if (other.state != State::AtWarpOp) return;  // wait for it
  }
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const Fiber& other = lane_fiber(warp, l);
    if (!same_site(other.site, f.site) || other.op.mask != mask || other.op.kind != f.op.kind ||
        other.op.width != f.op.width || std::strcmp(other.op.name, f.op.name) != 0)
      fail("lanes of warp " + std::to_string(warp) + " meet at different warp operations: " + thread_name(f) +
           " at " + call + ", " + thread_name(other) + " at " + other.op.name + " (" + describe(other.site) +
           ") with mask " + hex(other.op.mask));
  }
  if (f.op.shuffle) {
    for (unsigned l = 0; l < 32; ++l) {
      if (!(mask >> l & 1u)) continue;
      Fiber& reader = lane_fiber(warp, l);
      const int src = source_lane(reader.op, static_cast<int>(l));
      if (!(mask >> src & 1u))
        fail(thread_name(reader) + " reads lane " + std::to_string(src) + " in " + call +
             ", but that lane is not in the mask: its value is undefined");
      std::memcpy(reader.op.result, lane_fiber(warp, src).op.value, reader.op.size);
    }
  }
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    lane_fiber(warp, l).state = State::Runnable;
    ++run.runnable;
  }
}

void on_exit(Fiber& f) {
  ++run.exited;
  if (run.kernel_error) {
    try {
      std::rethrow_exception(run.kernel_error);
    } catch (const std::exception& e) {
      fail(thread_name(f) + " raised: " + e.what());
    }
  }
  for (unsigned t = 0; t < run.threads; ++t)
    if (fibers[t].state == State::AtBarrier)
      fail(thread_name(f) + " exited while " + thread_name(fibers[t]) + " waits at __syncthreads (" +
           describe(fibers[t].site) + "): every thread of a block must reach each barrier");
  const unsigned warp = f.linear / 32, lane = f.linear % 32;
  for (unsigned l = 0; l < lanes_in_warp(warp); ++l) {
    const Fiber& other = lane_fiber(warp, l);
    if (other.state == State::AtWarpOp && (other.op.mask >> lane & 1u))
      fail(thread_name(f) + " exited while " + thread_name(other) + " waits for it at " + other.op.name + " (" +
           describe(other.site) + ") with mask " + hex(other.op.mask));
  }
}

// Runs fiber f until it waits or ends, then checks what it reached.
void step(Fiber& f) {
  --run.runnable;
  resume(f);
  switch (f.state) {
    case State::AtBarrier:
      on_barrier(f);
      break;
    case State::AtWarpOp:
      on_warp_op(f);
      break;
    case State::Exited:
      on_exit(f);
      break;
    case State::Runnable:
      break;
  }
}

[[noreturn]] void deadlock() {
  std::ostringstream out;
  out << "deadlock: no thread can go on;";
  int shown = 0;
  for (unsigned t = 0; t < run.threads && shown < 4; ++t) {
    const Fiber& f = fibers[t];
    if (f.state == State::AtBarrier || f.state == State::AtWarpOp) {
      out << (shown ? "," : "") << " " << thread_name(f) << " waits at "
          << (f.state == State::AtBarrier ? "__syncthreads" : f.op.name) << " (" << describe(f.site) << ")";
      if (f.state == State::AtWarpOp) out << " with mask " << hex(f.op.mask);
      ++shown;
    }
  }
  fail(out.str());
}

// 0..n-1 in the order of the schedule (a fresh permutation per call when shuffled).
const std::vector<unsigned>& ordered(unsigned n, std::vector<unsigned>& order) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0u);
  if (schedule.order == Order::Reverse) std::reverse(order.begin(), order.end());
  if (schedule.order == Order::Shuffle) std::shuffle(order.begin(), order.end(), run.rng);
  return order;
}

// The __shared__ variables of this module: the function-local statics of the namespaces
// fastdnas and cuda_emu in writable sections, read from the module's symbol table. (The
// runtime keeps its own state at namespace scope, so none of it is among them.)
struct SharedVariable {
  char* address;
  size_t size;
};
std::vector<SharedVariable> shared;
bool shared_found = false;

std::vector<SharedVariable> find_shared_variables() {
  std::vector<SharedVariable> found;
  Dl_info info;
  TORCH_CHECK(dladdr(reinterpret_cast<void*>(&device_properties), &info) != 0, "cuda_emu: dladdr failed");
  std::ifstream file(info.dli_fname, std::ios::binary);
  const std::vector<char> elf((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  TORCH_CHECK(elf.size() > sizeof(Elf64_Ehdr), "cuda_emu: could not read ", info.dli_fname);
  const auto* header = reinterpret_cast<const Elf64_Ehdr*>(elf.data());
  const auto* sections = reinterpret_cast<const Elf64_Shdr*>(elf.data() + header->e_shoff);
  for (int i = 0; i < header->e_shnum; ++i) {
    if (sections[i].sh_type != SHT_SYMTAB) continue;
    const auto* symbols = reinterpret_cast<const Elf64_Sym*>(elf.data() + sections[i].sh_offset);
    const char* names = elf.data() + sections[sections[i].sh_link].sh_offset;
    for (size_t k = 0; k < sections[i].sh_size / sizeof(Elf64_Sym); ++k) {
      const Elf64_Sym& s = symbols[k];
      if (ELF64_ST_TYPE(s.st_info) != STT_OBJECT || s.st_size == 0 || s.st_shndx >= header->e_shnum) continue;
      if (!(sections[s.st_shndx].sh_flags & SHF_WRITE)) continue;
      const char* name = names + s.st_name;
      if (std::strncmp(name, "_ZZN8fastdnas", 13) == 0 || std::strncmp(name, "_ZZN8cuda_emu", 13) == 0)
        found.push_back({static_cast<char*>(info.dli_fbase) + s.st_value, s.st_size});
    }
  }
  TORCH_CHECK(!found.empty(), "cuda_emu: found no __shared__ variables in the symbol table of ", info.dli_fname);
  return found;
}

const std::vector<SharedVariable>& shared_variables() {
  if (!shared_found) {
    shared = find_shared_variables();
    shared_found = true;
  }
  return shared;
}

void run_block() {
  // Garbage in shared memory at each block start: a read before a write shows.
  for (const SharedVariable& v : shared_variables()) std::memset(v.address, 0xff, v.size);
  for (unsigned t = 0; t < run.threads; ++t) {
    Fiber& f = fibers[t];
    reset(f);
    f.state = State::Runnable;
    f.linear = t;
    f.idx = {t % run.block.x, (t / run.block.x) % run.block.y, t / (run.block.x * run.block.y)};
  }
  stacks_dirty = false;
  run.runnable = run.threads;
  run.at_barrier = run.exited = 0;
  std::vector<unsigned> order, lanes;
  while (run.exited < run.threads) {
    if (run.runnable == 0) deadlock();
    if (schedule.greedy) {
      for (unsigned w : ordered(run.warps, order)) {
        for (bool again = true; again;) {
          again = false;
          for (unsigned l : ordered(lanes_in_warp(w), lanes)) {
            Fiber& f = lane_fiber(w, l);
            if (f.state != State::Runnable) continue;
            step(f);
            again = true;
          }
        }
      }
    } else {
      for (unsigned t : ordered(run.threads, order))
        if (fibers[t].state == State::Runnable) step(fibers[t]);
    }
  }
}

std::string configuration_problem(dim3 grid, dim3 block, size_t shared_bytes) {
  std::ostringstream out;
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0)
    out << "empty grid " << describe({grid.x, grid.y, grid.z});
  else if (grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    out << "grid " << describe({grid.x, grid.y, grid.z}) << " beyond (2^31 - 1, 65535, 65535)";
  else if (threads == 0)
    out << "empty block " << describe({block.x, block.y, block.z});
  else if (threads > kMaxThreadsPerBlock || block.x > 1024 || block.y > 1024 || block.z > 64)
    out << "block " << describe({block.x, block.y, block.z}) << " of " << threads
        << " threads; at most 1024 threads, (1024, 1024, 64) per dimension";
  else if (shared_bytes > kMaxSharedBytes)
    out << shared_bytes << " bytes of dynamic shared memory; at most " << kMaxSharedBytes;
  return out.str();
}

// Leaves the emulator ready for the next launch however this one ends.
struct RunReset {
  ~RunReset() {
    if (std::uncaught_exceptions() > 0) stacks_dirty = true;
    run.body = nullptr;
    run.kernel_error = nullptr;
  }
};

}  // namespace

cudaDeviceProp* device_properties() { return &properties; }

void launch(const LaunchSite& where, dim3 grid, dim3 block, size_t shared_bytes, const Body& body) {
  std::lock_guard<std::mutex> guard(launch_lock);
  if (!pending_error.empty()) {
    const std::string unchecked = std::move(pending_error);
    pending_error.clear();
    TORCH_CHECK(false, "cuda_emu: kernel ", where.kernel, " launched at ", where.file, ":", where.line,
                " after a failed launch that was never checked with C10_CUDA_KERNEL_LAUNCH_CHECK: ", unchecked);
  }
  const std::string problem = configuration_problem(grid, block, shared_bytes);
  if (!problem.empty()) {
    // Like CUDA: the launch does nothing and the error waits for the launch check.
    pending_error = std::string("CUDA error: invalid configuration argument (emulated launch of ") + where.kernel +
                    " at " + where.file + ":" + std::to_string(where.line) + ": " + problem + ")";
    return;
  }
#if CUDA_EMU_ASAN
  if (!asan_callback_set) __asan_set_error_report_callback(report_emulated_thread);
  asan_callback_set = true;
#endif
  RunReset reset_after;
  run.where = where;
  run.body = &body;
  run.grid = grid;
  run.block = block;
  run.threads = block.x * block.y * block.z;
  run.warps = (run.threads + 31) / 32;
  run.kernel_error = nullptr;
  run.rng.seed(schedule.seed * 0x9e3779b97f4a7c15ull + launches_since_schedule);
  ++launch_count;
  ++launches_since_schedule;
  launched_kernels.emplace_back(where.kernel);
  allocate_stacks(run.threads);
  gridDim = grid;
  blockDim = block;
  const uint64_t blocks = uint64_t{grid.x} * grid.y * grid.z;
  std::vector<uint64_t> block_order(blocks);
  std::iota(block_order.begin(), block_order.end(), uint64_t{0});
  if (schedule.order == Order::Reverse) std::reverse(block_order.begin(), block_order.end());
  if (schedule.order == Order::Shuffle) std::shuffle(block_order.begin(), block_order.end(), run.rng);
  for (uint64_t b : block_order) {
    run.block_idx = {static_cast<unsigned>(b % grid.x), static_cast<unsigned>((b / grid.x) % grid.y),
                     static_cast<unsigned>(b / (uint64_t{grid.x} * grid.y))};
    blockIdx = run.block_idx;
    run_block();
  }
}

void check_last_launch(const char* file, int line) {
  if (pending_error.empty()) return;
  const std::string error = std::move(pending_error);
  pending_error.clear();
  TORCH_CHECK(false, error, " (checked at ", file, ":", line, ")");
}

void syncthreads(Site site) {
  Fiber& f = current_fiber("__syncthreads");
  f.state = State::AtBarrier;
  f.site = site;
  suspend(f);
}

void syncwarp(unsigned mask, Site site) {
  Fiber& f = current_fiber("__syncwarp");
  f.state = State::AtWarpOp;
  f.site = site;
  f.op = WarpOp{"__syncwarp", false, ShuffleKind::Index, mask, 0, 32, 0, {}, nullptr};
  suspend(f);
}

void shuffle(ShuffleKind kind, unsigned mask, const void* value, void* result, size_t size, int arg, int width,
             Site site) {
  Fiber& f = current_fiber("a warp shuffle");
  f.state = State::AtWarpOp;
  f.site = site;
  f.op = WarpOp{shuffle_names[static_cast<int>(kind)], true, kind, mask, arg, width, size, {}, result};
  std::memcpy(f.op.value, value, size);
  suspend(f);
}

// ---- settings, for the Python module -----------------------------------------------------

void set_schedule(const std::string& mode, uint64_t seed) {
  std::lock_guard<std::mutex> guard(launch_lock);
  Schedule s;
  s.seed = seed;
  launches_since_schedule = 0;
  std::string order = mode;
  if (order.rfind("greedy-", 0) == 0) {
    s.greedy = true;
    order = order.substr(7);
  }
  if (order == "forward")
    s.order = Order::Forward;
  else if (order == "reverse")
    s.order = Order::Reverse;
  else if (order == "shuffle")
    s.order = Order::Shuffle;
  else
    TORCH_CHECK(false, "cuda_emu: unknown schedule ", mode,
                "; expected forward, reverse, shuffle, or one of them prefixed by greedy-");
  schedule = s;
}

void set_multiprocessor_count(int count) {
  TORCH_CHECK(count >= 1, "cuda_emu: the multiprocessor count must be >= 1, got ", count);
  properties.multiProcessorCount = count;
}

uint64_t launches() { return launch_count; }
std::vector<std::string> take_launched_kernels() {
  std::vector<std::string> names;
  names.swap(launched_kernels);
  return names;
}
uint64_t switches() { return switch_count; }

}  // namespace cuda_emu
