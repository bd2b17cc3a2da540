// Loads a built libln_deploy_trt_plugin.so the way IPluginRegistry::loadLibrary does (dlopen,
// setLoggerFinder, getCreators) with no TensorRT library in the process, and drives both plugins
// through their creators with the attributes of real fused ONNX models' plugin nodes:
//
//   plugin_loader_test PLUGIN.so NODES.txt
//
// NODES.txt (written by tests/plugins/test_plugin_loader.py from `fuse --target tensorrt` output):
//   node <op_type> <node_name> <nb_inputs> <nb_outputs>
//   input <index> <rank> <d0> ... (-1 = dynamic)
//   attr <name> INT <value> | attr <name> FLOAT <%a hex float> | attr <name> STRING <hex bytes or ->
//   end
// Fields are built as TensorRT's ONNX parser builds them (onnx-tensorrt's loadFields): for each
// name in the creator's getFieldNames() that the node has, INT -> kINT32, FLOAT -> kFLOAT32,
// STRING -> kCHAR, length 1 (a string's length in bytes); the creator is looked up by op_type,
// the plugin_version attribute (default "1") and plugin_namespace (default "").
// Needs only the TensorRT headers. Prints one line per failed check, then PASSED/FAILED.
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "NvInferRuntime.h"

using namespace nvinfer1;

namespace
{
int gFailures = 0;
int gChecks = 0;

bool check(bool ok, std::string const& what)
{
    ++gChecks;
    if (!ok)
    {
        ++gFailures;
        std::printf("FAIL %s\n", what.c_str());
    }
    return ok;
}

// What the plugin logs through the finder TensorRT would hand it.
class CountingLogger : public ILogger
{
public:
    void log(Severity severity, char const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
            ++errors;
        else if (severity == Severity::kWARNING)
            ++warnings;
        last = msg;
    }
    int errors{0};
    int warnings{0};
    std::string last;
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* l)
        : mLogger(l)
    {
    }
    ILogger* findLogger() override { return mLogger; }

private:
    ILogger* mLogger;
};

struct Attr
{
    std::string type; // INT, FLOAT, STRING
    int32_t i{0};
    float f{0.0f};
    std::string s;
};

struct Node
{
    std::string op;
    std::string name;
    int32_t nbInputs{0};
    int32_t nbOutputs{0};
    std::map<int, std::vector<int64_t>> inputs;
    std::vector<std::pair<std::string, Attr>> attrs; // in the node's order
    Attr const* find(char const* n) const
    {
        for (auto const& a : attrs)
            if (a.first == n)
                return &a.second;
        return nullptr;
    }
};

std::string unhex(std::string const& h)
{
    if (h == "-")
        return {};
    std::string out;
    for (size_t i = 0; i + 1 < h.size(); i += 2)
        out.push_back(static_cast<char>(std::strtol(h.substr(i, 2).c_str(), nullptr, 16)));
    return out;
}

std::vector<Node> readNodes(char const* path)
{
    std::ifstream in(path);
    std::vector<Node> nodes;
    std::string line;
    while (std::getline(in, line))
    {
        std::istringstream ls(line);
        std::string tag;
        ls >> tag;
        if (tag == "node")
        {
            nodes.emplace_back();
            ls >> nodes.back().op >> nodes.back().name >> nodes.back().nbInputs >> nodes.back().nbOutputs;
        }
        else if (tag == "input" && !nodes.empty())
        {
            int idx = 0, rank = 0;
            ls >> idx >> rank;
            std::vector<int64_t> d(rank);
            for (auto& v : d)
                ls >> v;
            nodes.back().inputs[idx] = d;
        }
        else if (tag == "attr" && !nodes.empty())
        {
            std::string name, value;
            Attr a;
            ls >> name >> a.type >> value;
            if (a.type == "INT")
                a.i = static_cast<int32_t>(std::strtoll(value.c_str(), nullptr, 10));
            else if (a.type == "FLOAT")
                a.f = std::strtof(value.c_str(), nullptr); // %a: exact
            else
                a.s = unhex(value);
            nodes.back().attrs.emplace_back(name, a);
        }
    }
    return nodes;
}

// Field storage that outlives the collection (the parser's fieldData).
struct FieldSet
{
    std::vector<PluginField> list;
    std::vector<std::unique_ptr<std::vector<char>>> data;
    void add(std::string const& name, Attr const& a)
    {
        names.push_back(std::make_unique<std::string>(name));
        auto buf = std::make_unique<std::vector<char>>();
        PluginFieldType t;
        int32_t length = 1;
        if (a.type == "INT")
        {
            buf->resize(4);
            std::memcpy(buf->data(), &a.i, 4);
            t = PluginFieldType::kINT32;
        }
        else if (a.type == "FLOAT")
        {
            buf->resize(4);
            std::memcpy(buf->data(), &a.f, 4);
            t = PluginFieldType::kFLOAT32;
        }
        else
        {
            buf->assign(a.s.begin(), a.s.end());
            t = PluginFieldType::kCHAR;
            length = static_cast<int32_t>(a.s.size());
        }
        list.emplace_back(names.back()->c_str(), buf->data(), t, length);
        data.push_back(std::move(buf));
    }
    PluginFieldCollection fc() const { return PluginFieldCollection{static_cast<int32_t>(list.size()), list.data()}; }
    std::vector<std::unique_ptr<std::string>> names;
};

// onnx-tensorrt's loadFields: only the creator's field names, typed by the attribute's type.
FieldSet parserFields(IPluginCreatorV3One* creator, Node const& node, int* missing)
{
    FieldSet fs;
    PluginFieldCollection const* names = creator->getFieldNames();
    *missing = 0;
    for (int32_t i = 0; names != nullptr && i < names->nbFields; ++i)
    {
        Attr const* a = node.find(names->fields[i].name);
        if (a == nullptr)
            ++*missing; // the parser warns and relies on the creator's default
        else
            fs.add(names->fields[i].name, *a);
    }
    return fs;
}

char const* typeName(DataType t)
{
    switch (t)
    {
    case DataType::kFLOAT: return "fp32";
    case DataType::kHALF: return "fp16";
    case DataType::kBF16: return "bf16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    default: return "other";
    }
}

DynamicPluginTensorDesc desc(DataType t, std::vector<int64_t> const& dims)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
        d.desc.dims.d[i] = dims[i];
    d.min = d.opt = d.max = d.desc.dims;
    return d;
}

// The bytes of every serialized field, by name, for comparing two plugins.
std::map<std::string, std::pair<PluginFieldType, std::vector<char>>> fieldBytes(PluginFieldCollection const* fc)
{
    std::map<std::string, std::pair<PluginFieldType, std::vector<char>>> m;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        size_t const elem = f.type == PluginFieldType::kCHAR ? 1 : 4;
        char const* p = static_cast<char const*>(f.data);
        m[f.name] = {f.type, std::vector<char>(p, p + elem * f.length)};
    }
    return m;
}

template <typename Cap>
Cap* cap(IPluginV3* p, PluginCapabilityType t)
{
    return p != nullptr ? static_cast<Cap*>(p->getCapabilityInterface(t)) : nullptr;
}

// Every dtype combination the plugin documents, plus ones it must refuse.
void checkTypes(IPluginV3* plugin, Node const& node, std::vector<int64_t> xDims, std::string const& tag)
{
    auto* build = cap<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    bool const skip = node.op == "LnDeploySkipNorm";
    int32_t const scaleIdx = skip ? 2 : 1;
    int32_t const nbIn = node.nbInputs;
    int32_t const nbOut = node.nbOutputs;
    int64_t hidden = xDims.back();
    for (auto& d : xDims)
        if (d < 0)
            d = 3; // a concrete extent for a dynamic axis
    // (x, scale/bias) pairs of the README: scale in x's type or fp32
    std::pair<DataType, DataType> const pairs[] = {{DataType::kFLOAT, DataType::kFLOAT}, {DataType::kHALF, DataType::kHALF},
        {DataType::kHALF, DataType::kFLOAT}, {DataType::kBF16, DataType::kBF16}, {DataType::kBF16, DataType::kFLOAT}};
    for (auto const& [x, s] : pairs)
        {
            std::string const what = tag + " x=" + typeName(x) + " scale=" + typeName(s);
            std::vector<DynamicPluginTensorDesc> io;
            std::vector<DataType> inTypes;
            for (int32_t i = 0; i < nbIn; ++i)
            {
                bool const w = i >= scaleIdx;
                io.push_back(desc(w ? s : x, w ? std::vector<int64_t>{hidden} : xDims));
                inTypes.push_back(w ? s : x);
            }
            for (int32_t o = 0; o < nbOut; ++o)
                io.push_back(desc(x, xDims));
            for (int32_t pos = 0; pos < nbIn + nbOut; ++pos)
                check(build->supportsFormatCombination(pos, io.data(), nbIn, nbOut),
                    what + ": position " + std::to_string(pos) + " accepted");
            std::vector<DataType> outTypes(nbOut, DataType::kINT8);
            bool ok = build->getOutputDataTypes(outTypes.data(), nbOut, inTypes.data(), nbIn) == 0;
            for (DataType t : outTypes)
                ok = ok && t == x;
            check(ok, what + ": every output takes x's type");
            check(build->configurePlugin(io.data(), nbIn, io.data() + nbIn, nbOut) == 0, what + ": configurePlugin");
            // refused: an output in another type, a 16-bit scale of the other 16-bit type, int8 x
            std::vector<DynamicPluginTensorDesc> bad = io;
            bad[nbIn].desc.type = x == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
            check(!build->supportsFormatCombination(nbIn, bad.data(), nbIn, nbOut), what + ": output of another type refused");
            if (x != DataType::kFLOAT && s == x)
            {
                bad = io;
                bad[scaleIdx].desc.type = x == DataType::kHALF ? DataType::kBF16 : DataType::kHALF;
                check(!build->supportsFormatCombination(scaleIdx, bad.data(), nbIn, nbOut),
                    what + ": scale of the other 16-bit type refused");
            }
        }
    std::vector<DynamicPluginTensorDesc> io8;
    for (int32_t i = 0; i < nbIn + nbOut; ++i)
        io8.push_back(desc(DataType::kINT8, xDims));
    check(!build->supportsFormatCombination(0, io8.data(), nbIn, nbOut), tag + ": int8 x refused");
    std::vector<DataType> inT(nbIn, DataType::kINT32), outT(nbOut);
    check(build->getOutputDataTypes(outT.data(), nbOut, inT.data(), nbIn) != 0, tag + ": int32 x refused");
}

void checkShapes(IPluginV3* plugin, Node const& node, std::vector<int64_t> const& xDims, std::string const& tag)
{
    auto* build = cap<IPluginV3OneBuild>(plugin, PluginCapabilityType::kBUILD);
    // Fake expressions (never dereferenced: the outputs copy x's expressions).
    std::vector<DimsExprs> in(node.nbInputs);
    for (int32_t i = 0; i < node.nbInputs; ++i)
    {
        auto it = node.inputs.find(i);
        in[i].nbDims = it != node.inputs.end() ? static_cast<int32_t>(it->second.size()) : 1;
        for (int32_t k = 0; k < in[i].nbDims; ++k)
            in[i].d[k] = reinterpret_cast<IDimensionExpr const*>(static_cast<uintptr_t>(0x10000 + 0x100 * i + 8 * k));
    }
    in[0].nbDims = static_cast<int32_t>(xDims.size());
    std::vector<DimsExprs> out(node.nbOutputs);
    class NoBuilder : public IExprBuilder
    {
    public:
        NoBuilder() { mImpl = nullptr; }
    } eb;
    bool ok = build->getOutputShapes(in.data(), node.nbInputs, nullptr, 0, out.data(), node.nbOutputs, eb) == 0;
    for (auto const& o : out)
    {
        ok = ok && o.nbDims == in[0].nbDims;
        for (int32_t k = 0; ok && k < o.nbDims; ++k)
            ok = o.d[k] == in[0].d[k];
    }
    check(ok, tag + ": every output has x's shape (rank " + std::to_string(xDims.size()) + ")");
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::fprintf(stderr, "usage: %s PLUGIN.so NODES.txt\n", argv[0]);
        return 2;
    }
    // RTLD_NOW: every symbol the library needs must resolve now, in a process with no TensorRT
    // library (stricter than the RTLD_LAZY a loader may use).
    check(dlsym(RTLD_DEFAULT, "getPluginRegistry") == nullptr, "no libnvinfer in this process");
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!check(lib != nullptr, std::string("dlopen: ") + (lib ? "" : dlerror())))
    {
        std::printf("FAILED: %d checks, %d failed\n", gChecks, gFailures);
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    check(getCreators != nullptr, "getCreators exported");
    check(setLoggerFinder != nullptr, "setLoggerFinder exported");
    check(dlsym(lib, "getPluginCreators") == nullptr, "no getPluginCreators (no IPluginV2 creators)");
    check(dlsym(lib, "ln_norm_forward") == nullptr, "the kernels' C ABI stays inside the plugin");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
        return 1;
    CountingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);

    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    check(creators != nullptr && nbCreators == 2, "getCreators returns 2 creators");
    std::map<std::string, IPluginCreatorV3One*> byKey; // name/version/namespace
    for (int32_t i = 0; creators != nullptr && i < nbCreators; ++i)
    {
        check(std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0, "creator is V3One");
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        byKey[std::string(c->getPluginName()) + "/" + c->getPluginVersion() + "/" + c->getPluginNamespace()] = c;
        std::printf("creator %s version %s namespace '%s'\n", c->getPluginName(), c->getPluginVersion(),
            c->getPluginNamespace());
    }

    std::vector<Node> nodes = readNodes(argv[2]);
    check(!nodes.empty(), "plugin nodes read from the fused models");
    std::map<std::string, int> created;
    for (Node const& node : nodes)
    {
        Attr const* ver = node.find("plugin_version");
        Attr const* ns = node.find("plugin_namespace");
        std::string const key = node.op + "/" + (ver ? ver->s : "1") + "/" + (ns ? ns->s : "");
        std::string const tag = node.op + " '" + node.name + "'";
        auto it = byKey.find(key);
        if (!check(it != byKey.end(), tag + ": a creator for " + key))
            continue;
        IPluginCreatorV3One* creator = it->second;
        int missing = 0;
        FieldSet fs = parserFields(creator, node, &missing);
        check(missing == 0, tag + ": every creator field is a node attribute");
        PluginFieldCollection fc = fs.fc();
        int const errorsBefore = logger.errors;
        std::unique_ptr<IPluginV3> plugin(creator->createPlugin(node.name.c_str(), &fc, TensorRTPhase::kBUILD));
        if (!check(plugin != nullptr && logger.errors == errorsBefore,
                tag + ": createPlugin(kBUILD) from the parser's fields (" + logger.last + ")"))
            continue;
        auto* build = cap<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
        auto* core = cap<IPluginV3OneCore>(plugin.get(), PluginCapabilityType::kCORE);
        auto* rt = cap<IPluginV3OneRuntime>(plugin.get(), PluginCapabilityType::kRUNTIME);
        check(build && core && rt, tag + ": core, build and runtime capabilities");
        check(std::strcmp(core->getPluginName(), node.op.c_str()) == 0, tag + ": plugin name is the op_type");
        check(build->getNbOutputs() == node.nbOutputs,
            tag + ": " + std::to_string(node.nbOutputs) + " output(s) as in the model (got "
                + std::to_string(build->getNbOutputs()) + ")");
        std::vector<int64_t> xDims = node.inputs.count(0) ? node.inputs.at(0) : std::vector<int64_t>{-1, -1};
        checkShapes(plugin.get(), node, xDims, tag);
        checkTypes(plugin.get(), node, xDims, tag);

        // serialize, recreate at the runtime phase, compare
        auto const serialized = fieldBytes(rt->getFieldsToSerialize());
        PluginFieldCollection const* serFc = rt->getFieldsToSerialize();
        check(serFc != nullptr && serFc->nbFields == creator->getFieldNames()->nbFields,
            tag + ": getFieldsToSerialize writes every field");
        for (auto const& [name, a] : node.attrs)
        {
            auto s = serialized.find(name);
            if (s == serialized.end())
                continue; // plugin_version / plugin_namespace
            bool same = a.type == "INT" ? s->second.first == PluginFieldType::kINT32
                    && std::memcmp(s->second.second.data(), &a.i, 4) == 0
                                        : s->second.first == PluginFieldType::kFLOAT32
                    && std::memcmp(s->second.second.data(), &a.f, 4) == 0;
            check(same, tag + ": serialized " + name + " equals the model's attribute");
        }
        std::unique_ptr<IPluginV3> back(creator->createPlugin(node.name.c_str(), serFc, TensorRTPhase::kRUNTIME));
        if (check(back != nullptr, tag + ": createPlugin(kRUNTIME) from getFieldsToSerialize"))
        {
            auto* rt2 = cap<IPluginV3OneRuntime>(back.get(), PluginCapabilityType::kRUNTIME);
            check(fieldBytes(rt2->getFieldsToSerialize()) == serialized, tag + ": runtime plugin serializes the same bytes");
            check(cap<IPluginV3OneBuild>(back.get(), PluginCapabilityType::kBUILD)->getNbOutputs() == node.nbOutputs,
                tag + ": runtime plugin has the same outputs");
            // the runtime phase only calls runtime methods: onShapeChange with the model's shape
            std::vector<PluginTensorDesc> in, out;
            std::vector<int64_t> concrete = xDims;
            for (auto& d : concrete)
                d = d < 0 ? 3 : d;
            int32_t const scaleIdx = node.op == "LnDeploySkipNorm" ? 2 : 1;
            for (int32_t i = 0; i < node.nbInputs; ++i)
                in.push_back(desc(DataType::kHALF, i >= scaleIdx ? std::vector<int64_t>{concrete.back()} : concrete).desc);
            for (int32_t o = 0; o < node.nbOutputs; ++o)
                out.push_back(desc(DataType::kHALF, concrete).desc);
            check(rt2->onShapeChange(in.data(), node.nbInputs, out.data(), node.nbOutputs) == 0,
                tag + ": onShapeChange at the runtime phase");
            std::unique_ptr<IPluginV3> ctx(rt2->attachToContext(nullptr));
            check(ctx != nullptr, tag + ": attachToContext");
        }
        std::unique_ptr<IPluginV3> cl(plugin->clone());
        plugin.reset();
        check(cl != nullptr
                && fieldBytes(cap<IPluginV3OneRuntime>(cl.get(), PluginCapabilityType::kRUNTIME)->getFieldsToSerialize())
                    == serialized,
            tag + ": a clone outlives its original with the same fields");

        // every attribute, not only the creator's fields (STRING -> kCHAR): unknown ones are
        // ignored with a warning through the logger finder, never an error
        FieldSet all;
        for (auto const& [name, a] : node.attrs)
            all.add(name, a);
        PluginFieldCollection allFc = all.fc();
        int const warningsBefore = logger.warnings;
        std::unique_ptr<IPluginV3> tolerant(creator->createPlugin(node.name.c_str(), &allFc, TensorRTPhase::kBUILD));
        check(tolerant != nullptr && logger.warnings > warningsBefore,
            tag + ": string attributes as kCHAR fields are ignored with a warning through the logger finder");
        ++created[node.op];
        std::printf("ok %s (%d inputs, %d outputs, x rank %zu)\n", tag.c_str(), node.nbInputs, node.nbOutputs,
            xDims.size());
    }
    for (char const* op : {"LnDeployNorm", "LnDeploySkipNorm"})
        check(created[op] > 0, std::string(op) + " created from at least one model node");
    std::printf("created: LnDeployNorm %d, LnDeploySkipNorm %d; logger: %d warnings, %d errors\n", created["LnDeployNorm"],
        created["LnDeploySkipNorm"], logger.warnings, logger.errors);
    std::printf("%s: %d checks, %d failed\n", gFailures ? "FAILED" : "PASSED", gChecks, gFailures);
    return gFailures ? 1 : 0;
}
