/*
 * The mcprun binary's launcher: unpack once into a cache folder, then run from there.
 *
 * The binary is this small static program with an archive appended: the PyInstaller
 * one-folder build of mcprun plus the C library and loader it was linked against. The first run
 * unpacks the archive into a folder named after the build; every later run finds that
 * folder complete and only execs into it, through the bundled dynamic loader, so the
 * binary needs no libc on the host and never re-extracts (PyInstaller's one-file mode
 * unpacks ~50 MB on every start). Where the folder goes, first match wins:
 *
 *   $MCPRUN_CACHE, $XDG_CACHE_HOME/mcprun, $HOME/.cache/mcprun, $TMPDIR/mcprun-UID (/tmp)
 *
 * A candidate is skipped when it can't be written or its file system forbids programs
 * (noexec), unless it already holds this build (a read-only, pre-unpacked shared cache).
 * Each start removes the folders of other builds that no running mcprun holds and none has started
 * for a day (KEPT_UNUSED): two versions used in turn keep their folders, an old one goes.
 *
 * Archive (written by packaging/bundle_binary.py), after the launcher's own bytes:
 *   entries: u8 kind ('d' folder, 'f' file, 'l' symlink), u32 mode, u16 path length, path,
 *            u64 stored length, u64 size, data (zlib stream for files, target for symlinks)
 *   trailer: 16-byte build id (hex), u64 archive offset, 8-byte magic "MCPRUNB1"
 * Integers are little-endian. Built with: cc -static -O2 launcher.c -lz
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <zlib.h>

#define MAGIC "MCPRUNB1"
#define ID_LENGTH 16
#define TRAILER_SIZE (ID_LENGTH + 8 + 8)
#define EXIT_FAILURE_CODE 1
#define KEPT_UNUSED (24 * 60 * 60) /* seconds another build's folder stays after its last start */

static const char *self_path;

static void fail(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fputs("mcprun: error: ", stderr);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    exit(EXIT_FAILURE_CODE);
}

static char *join(const char *a, const char *b)
{
    char *path;
    if (asprintf(&path, "%s/%s", a, b) < 0)
        fail("out of memory");
    return path;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t value = 0;
    for (int i = 7; i >= 0; i--)
        value = value << 8 | p[i];
    return value;
}

/* read exactly size bytes, or fail naming the binary: a truncated download */
static void read_exactly(FILE *file, void *buffer, size_t size)
{
    if (fread(buffer, 1, size, file) != size)
        fail("%s is damaged (truncated?): download it again and check it with sha256sum -c SHA256SUMS",
             self_path);
}

static int remove_entry(const char *path, const struct stat *status, int flag, struct FTW *ftw)
{
    (void)status; (void)flag; (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *path)
{
    nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int is_directory(const char *path)
{
    struct stat status;
    return stat(path, &status) == 0 && S_ISDIR(status.st_mode);
}

static int is_complete(const char *unpacked)
{
    char *marker = join(unpacked, ".complete");
    int complete = access(marker, F_OK) == 0;
    free(marker);
    return complete;
}

/* mkdir -p that reports whether the folder now exists */
static int make_folders(const char *path)
{
    char buffer[PATH_MAX];
    if (snprintf(buffer, sizeof buffer, "%s", path) >= (int)sizeof buffer)
        return 0;
    for (char *p = buffer + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(buffer, 0755);
            *p = '/';
        }
    }
    mkdir(buffer, 0755);
    return is_directory(buffer);
}

/* a folder we can unpack into and run programs from */
static int usable_root(const char *root)
{
    struct statvfs fs;
    if (!make_folders(root) || access(root, W_OK | X_OK) != 0)
        return 0;
    return statvfs(root, &fs) == 0 && !(fs.f_flag & ST_NOEXEC);
}

static void unpack_file(FILE *archive, const char *path, uint32_t mode, uint64_t stored, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode & 07777);
    if (fd < 0)
        fail("cannot write %s: %s", path, strerror(errno));
    unsigned char in[1 << 16], out[1 << 16];
    z_stream stream = {0};
    if (inflateInit(&stream) != Z_OK)
        fail("zlib: cannot start");
    uint64_t written = 0;
    int status = Z_OK;
    while (stored > 0 && status != Z_STREAM_END) {
        size_t chunk = stored < sizeof in ? stored : sizeof in;
        read_exactly(archive, in, chunk);
        stored -= chunk;
        stream.next_in = in;
        stream.avail_in = chunk;
        do {
            stream.next_out = out;
            stream.avail_out = sizeof out;
            status = inflate(&stream, Z_NO_FLUSH);
            if (status != Z_OK && status != Z_STREAM_END && status != Z_BUF_ERROR)
                fail("%s is damaged (bad data for %s): download it again", self_path, path);
            size_t produced = sizeof out - stream.avail_out;
            if (produced && write(fd, out, produced) != (ssize_t)produced)
                fail("cannot write %s: %s", path, strerror(errno));
            written += produced;
        } while (stream.avail_out == 0);
    }
    inflateEnd(&stream);
    if (written != size || close(fd) != 0)
        fail("cannot write %s (disk full?)", path);
}

/* unpack the archive at offset into folder (which must not exist yet) */
static void unpack(const char *folder, long offset, long end)
{
    FILE *archive = fopen(self_path, "rb");
    if (!archive || fseek(archive, offset, SEEK_SET) != 0)
        fail("cannot read %s: %s", self_path, strerror(errno));
    if (mkdir(folder, 0755) != 0)
        fail("cannot create %s: %s", folder, strerror(errno));
    while (ftell(archive) < end) {
        unsigned char header[1 + 4 + 2];
        read_exactly(archive, header, sizeof header);
        uint32_t mode = header[1] | header[2] << 8 | header[3] << 16 | (uint32_t)header[4] << 24;
        size_t length = header[5] | header[6] << 8;
        char name[PATH_MAX], sizes[16];
        if (length == 0 || length >= sizeof name)
            fail("%s is damaged (bad entry): download it again", self_path);
        read_exactly(archive, name, length);
        name[length] = '\0';
        read_exactly(archive, sizes, sizeof sizes);
        uint64_t stored = le64((unsigned char *)sizes), size = le64((unsigned char *)sizes + 8);
        if (strstr(name, "..") || name[0] == '/')
            fail("%s is damaged (bad path %s): download it again", self_path, name);
        char *path = join(folder, name);
        if (header[0] == 'd') {
            if (mkdir(path, mode & 07777) != 0 && errno != EEXIST)
                fail("cannot create %s: %s", path, strerror(errno));
        } else if (header[0] == 'f') {
            unpack_file(archive, path, mode, stored, size);
        } else if (header[0] == 'l') {
            char target[PATH_MAX];
            if (stored >= sizeof target)
                fail("%s is damaged (bad link): download it again", self_path);
            read_exactly(archive, target, stored);
            target[stored] = '\0';
            if (symlink(target, path) != 0)
                fail("cannot create %s: %s", path, strerror(errno));
        } else {
            fail("%s is damaged (unknown entry): download it again", self_path);
        }
        free(path);
    }
    fclose(archive);
    char *marker = join(folder, ".complete");
    int fd = open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || close(fd) != 0)
        fail("cannot write %s: %s", marker, strerror(errno));
    free(marker);
}

/* remove other builds' folders that no running mcprun holds and none has started for KEPT_UNUSED seconds
   (a start touches its build's lock file), and half-unpacked leftovers */
static void clean_others(const char *root, const char *keep)
{
    DIR *dir = opendir(root);
    if (!dir)
        return;
    time_t now = time(NULL);
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        const char *name = entry->d_name;
        int unpacked = strncmp(name, "mcprun-", 7) == 0 && strlen(name) == 7 + ID_LENGTH;
        int partial = strncmp(name, ".mcprun-", 8) == 0 && strstr(name, ".tmp.");
        if ((!unpacked && !partial) || strcmp(name, keep) == 0)
            continue;
        char *path = join(root, name);
        if (partial) {  /* .mcprun-ID.tmp.PID: its unpacking process is gone */
            pid_t pid = (pid_t)atol(strstr(name, ".tmp.") + 5);
            if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH)
                remove_tree(path);
            free(path);
            continue;
        }
        char *lock_name, *lock_path;
        if (asprintf(&lock_name, ".%s.lock", name) < 0)
            fail("out of memory");
        lock_path = join(root, lock_name);
        struct stat lock_status;
        int recent = stat(lock_path, &lock_status) == 0 && now - lock_status.st_mtime < KEPT_UNUSED;
        int fd = recent ? -1 : open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0) {  /* no running mcprun holds that build */
            remove_tree(path);
            unlink(lock_path);
        }
        if (fd >= 0)
            close(fd);
        free(lock_path);
        free(lock_name);
        free(path);
    }
    closedir(dir);
}

/* Hold a shared lock on this build's lock file in root for as long as the program runs (the descriptor
   survives exec), and return it (-1: a read-only cache without one, where nothing is held and nobody cleans).
   A cleaner removes a folder holding the exclusive lock, then unlinks the lock file; a lock taken on a file
   unlinked meanwhile protects nothing, as the next cleaner makes a new file: lock again until the file locked
   is the one at the path. */
static int lock_build(const char *root, const char *id)
{
    char *lock_name, *lock_path;
    if (asprintf(&lock_name, ".mcprun-%s.lock", id) < 0)
        fail("out of memory");
    lock_path = join(root, lock_name);
    int fd = -1;
    for (int attempt = 0; attempt < 100; attempt++) {  /* each retry follows a cleaner's removal */
        fd = open(lock_path, O_RDWR | O_CREAT, 0644);
        if (fd < 0)
            fd = open(lock_path, O_RDONLY);
        if (fd < 0)
            break;
        flock(fd, LOCK_SH);
        struct stat at_path, locked;
        if (stat(lock_path, &at_path) == 0 && fstat(fd, &locked) == 0 && at_path.st_ino == locked.st_ino &&
            at_path.st_dev == locked.st_dev) {
            futimens(fd, NULL);  /* started now: cleaners keep this build's folder for KEPT_UNUSED seconds */
            break;
        }
        close(fd);
        fd = -1;
    }
    free(lock_path);
    free(lock_name);
    return fd;
}

/* the folder holding this build, unpacked if needed, and held (lock_build) */
static char *find_or_unpack(const char *id, long offset, long end)
{
    char name[8 + ID_LENGTH];
    snprintf(name, sizeof name, "mcprun-%s", id);
    const char *cache = getenv("MCPRUN_CACHE"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    const char *tmp = getenv("TMPDIR");
    char *candidates[4];
    int count = 0;
    if (cache && *cache)
        candidates[count++] = strdup(cache);
    else {
        if (xdg && *xdg == '/')
            candidates[count++] = join(xdg, "mcprun");
        if (home && *home == '/' && strcmp(home, "/") != 0)
            candidates[count++] = join(home, ".cache/mcprun");
        char *fallback;
        if (asprintf(&fallback, "%s/mcprun-%ld", tmp && *tmp == '/' ? tmp : "/tmp", (long)getuid()) < 0)
            fail("out of memory");
        candidates[count++] = fallback;
    }
    for (int i = 0; i < count; i++) {
        char *unpacked = join(candidates[i], name);
        if (is_complete(unpacked)) {
            int held = lock_build(candidates[i], id);
            if (is_complete(unpacked)) {  /* still: no cleaner removes it from now on */
                if (held >= 0)
                    clean_others(candidates[i], name);
                return unpacked;
            }
            if (held >= 0)
                close(held);  /* a cleaner removed it before the lock: unpack it again */
        }
        if (!usable_root(candidates[i])) {
            free(unpacked);
            continue;
        }
        char *partial;
        if (asprintf(&partial, "%s/.mcprun-%s.tmp.%ld", candidates[i], id, (long)getpid()) < 0)
            fail("out of memory");
        lock_build(candidates[i], id);  /* held from unpacking on: no cleaner removes the folder */
        unpack(partial, offset, end);
        if (rename(partial, unpacked) != 0) {  /* another run got there first: use theirs */
            remove_tree(partial);
            if (!is_complete(unpacked))
                fail("cannot create %s: %s", unpacked, strerror(errno));
        }
        clean_others(candidates[i], name);
        return unpacked;
    }
    if (cache && *cache)
        fail("MCPRUN_CACHE=%s: cannot unpack there (not writable, or mounted noexec) and it holds no "
             "unpacked copy of this build; point MCPRUN_CACHE at a writable folder that allows programs", cache);
    fail("no folder to unpack the mcprun binary into (tried $XDG_CACHE_HOME/mcprun, ~/.cache/mcprun, "
         "$TMPDIR/mcprun-UID; not writable or mounted noexec); set MCPRUN_CACHE to a writable folder "
         "that allows programs");
    return NULL;
}

int main(int argc, char **argv)
{
    static char self[PATH_MAX];
    ssize_t length = readlink("/proc/self/exe", self, sizeof self - 1);
    if (length <= 0)
        fail("cannot find this program (is /proc mounted?)");
    self[length] = '\0';
    self_path = self;

    FILE *file = fopen(self_path, "rb");
    unsigned char trailer[TRAILER_SIZE];
    if (!file || fseek(file, -TRAILER_SIZE, SEEK_END) != 0)
        fail("cannot read %s: %s", self_path, file ? strerror(errno) : strerror(errno));
    long end = ftell(file);
    read_exactly(file, trailer, sizeof trailer);
    fclose(file);
    if (memcmp(trailer + ID_LENGTH + 8, MAGIC, 8) != 0)
        fail("%s is damaged (no archive): download it again", self_path);
    char id[ID_LENGTH + 1];
    memcpy(id, trailer, ID_LENGTH);
    id[ID_LENGTH] = '\0';
    long offset = (long)le64(trailer + ID_LENGTH);

    char *unpacked = find_or_unpack(id, offset, end);

    /* run the program through the bundled loader and libc: nothing from the host's */
    char *loader = join(unpacked, "ld-mcprun.so.2"), *libraries;
    if (asprintf(&libraries, "%s/app/_internal", unpacked) < 0)
        fail("out of memory");
    char *program = join(unpacked, "app/mcprun");
    char **args = calloc(argc + 5, sizeof *args);
    int n = 0;
    args[n++] = "mcprun";
    args[n++] = "--library-path";
    args[n++] = libraries;
    args[n++] = program;
    for (int i = 1; i < argc; i++)
        args[n++] = argv[i];
    args[n] = NULL;
    setenv("MCPRUN_BINARY", self_path, 1);
    execv(loader, args);
    fail("cannot run %s: %s; set MCPRUN_CACHE to a writable folder on a file system that allows programs "
         "(not mounted noexec)", loader, strerror(errno));
    return EXIT_FAILURE_CODE;
}
