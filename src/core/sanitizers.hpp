// SPDX-License-Identifier: Apache-2.0
// Whether this translation unit is built with a sanitizer (GCC defines __SANITIZE_*, clang
// answers __has_feature). Layer: src/core (also used by the library's own tests).
#pragma once

namespace ferry::detail {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kSanitized = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
inline constexpr bool kSanitized = true;
#else
inline constexpr bool kSanitized = false;
#endif
#else
inline constexpr bool kSanitized = false;
#endif

}  // namespace ferry::detail
