// A CPU allocator for PyTorch that keeps freed large blocks for reuse, up to a limit of idle bytes.
//
// Why: a training step frees and reallocates the same tensor sizes over and over. glibc either keeps them in a heap
// that fragments (the process grows) or, with s5_hf.heap's mmap threshold, returns every block to the kernel, which
// then zeroes fresh pages for the next tensor: about 4 M extra page faults and 1 s of a 10 s ViT-B MDF step
// (benchmarks/TRAINING_MEMORY.md). Reusing blocks of the same size removes most of those faults; the idle limit
// bounds what the cache adds to the process's memory. Blocks are matched by size (rounded to pages), least
// recently freed evicted first. Small blocks go to PyTorch's own CPU allocation functions.
//
// Built and installed by s5_hf.heap (plain C ABI below, loaded with ctypes).

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <pthread.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <list>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kPage = 4096;

struct Block {
  void* ptr;
  size_t size;
  std::list<Block*>::iterator lru;  // position in the idle list while idle
};

class BlockCache final : public c10::Allocator {
 public:
  BlockCache(size_t min_size, size_t idle_limit) : min_size_(min_size), idle_limit_(idle_limit) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < min_size_) {
      void* ptr = c10::alloc_cpu(n);
      return {ptr, ptr, &c10::free_cpu, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t size = (n + kPage - 1) / kPage * kPage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = idle_.find(size);
      if (it != idle_.end() && !it->second.empty()) {  // a hit: taken and recorded live under one lock
        Block* block = it->second.back();
        it->second.pop_back();
        lru_.erase(block->lru);
        idle_bytes_ -= size;
        live_[block->ptr] = block;
        hits_++;
        return {block->ptr, block->ptr, &BlockCache::deleter, c10::Device(c10::DeviceType::CPU)};
      }
    }
    // A miss maps outside the lock (the kernel call is the slow part).
    void* ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED) {
      release_idle();  // the cached blocks may be what stands in the way
      ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      TORCH_CHECK_WITH(OutOfMemoryError, ptr != MAP_FAILED, "s5_hf CPU block cache: cannot map ", size, " bytes");
    }
    Block* block = new Block{ptr, size, {}};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[ptr] = block;
    }
    misses_++;
    return {ptr, ptr, &BlockCache::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  // Every pointer this allocator hands out, small or large, is freed through here (oneDNN frees through
  // raw_deleter()); small blocks are not in live_ and go back to PyTorch's free function.
  static void deleter(void* ptr);

  void free(void* ptr) {
    std::vector<Block*> evicted;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      auto found = live_.find(ptr);
      if (found == live_.end()) {  // a small block: PyTorch's own, freed outside the lock
        lock.unlock();
        c10::free_cpu(ptr);
        return;
      }
      Block* block = found->second;
      live_.erase(found);
      idle_[block->size].push_back(block);
      block->lru = lru_.insert(lru_.end(), block);
      idle_bytes_ += block->size;
      while (idle_bytes_ > idle_limit_) evicted.push_back(evict_oldest());
    }
    for (Block* block : evicted) unmap(block);
  }

  void release_idle() {
    std::vector<Block*> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (!lru_.empty()) evicted.push_back(evict_oldest());
    }
    for (Block* block : evicted) unmap(block);
  }

  c10::DeleterFnPtr raw_deleter() const override { return &BlockCache::deleter; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void stats(uint64_t* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    out[0] = hits_;
    out[1] = misses_;
    out[2] = idle_bytes_;
    out[3] = lru_.size();
    out[4] = live_.size();
  }

  // fork() copies only the calling thread: take the lock around it so the child never inherits it held.
  void lock() { mutex_.lock(); }
  void unlock() { mutex_.unlock(); }

 private:
  Block* evict_oldest() {  // mutex_ held
    Block* block = lru_.front();
    lru_.pop_front();
    auto& same = idle_[block->size];
    for (auto it = same.begin(); it != same.end(); ++it) {
      if (*it == block) {
        same.erase(it);
        break;
      }
    }
    idle_bytes_ -= block->size;
    return block;
  }

  static void unmap(Block* block) {
    munmap(block->ptr, block->size);
    delete block;
  }

  const size_t min_size_;
  const size_t idle_limit_;
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<Block*>> idle_;
  std::list<Block*> lru_;  // idle blocks, least recently freed first
  std::unordered_map<void*, Block*> live_;
  size_t idle_bytes_ = 0;
  std::atomic<uint64_t> hits_{0}, misses_{0};
};

BlockCache* g_cache = nullptr;

void BlockCache::deleter(void* ptr) { g_cache->free(ptr); }

}  // namespace

extern "C" {

// Installs the cache as PyTorch's CPU allocator (once per process). Returns 1 if installed now, 0 if it already was.
int s5_block_cache_install(uint64_t min_size, uint64_t idle_limit) {
  if (g_cache) return 0;
  g_cache = new BlockCache(min_size, idle_limit);  // never freed: tensors may outlive any owner
  pthread_atfork([] { g_cache->lock(); }, [] { g_cache->unlock(); }, [] { g_cache->unlock(); });
  c10::SetCPUAllocator(g_cache, /*priority=*/1);
  return 1;
}

// hits, misses, idle bytes, idle blocks, live blocks (all zero before install).
void s5_block_cache_stats(uint64_t* out) {
  if (g_cache) {
    g_cache->stats(out);
  } else {
    for (int i = 0; i < 5; i++) out[i] = 0;
  }
}

// Returns every idle block to the system.
void s5_block_cache_release(void) {
  if (g_cache) g_cache->release_idle();
}

}  // extern "C"
